# The engines agree: random declarations (generate.nix) from 40 seeds give
# the same module lists, home modules, deploy declarations and contexts in
# both; from 20 more seeds with cycles allowed, both fail or both give the
# same. The counts at the end make sure the seeds reach every feature.
{ composeWith, ... }:
let
  inherit (builtins)
    all
    attrNames
    attrValues
    concatLists
    deepSeq
    filter
    genList
    length
    match
    toJSON
    tryEval
    ;

  fast = composeWith { engine = "fast"; };
  reference = composeWith { engine = "reference"; };
  generate = import ./generate.nix;

  view =
    fleet:
    builtins.mapAttrs (_: h: {
      inherit (h)
        aspects
        deploy
        context
        home
        system
        ;
      # The host's own module is a function; the aspects' are data here.
      modules = builtins.tail h.modules;
    }) fleet.hosts;

  fail = why: throw "FAILED both-generated: ${why}";

  firstDifference =
    f: r:
    let
      hosts = filter (n: f.${n} != r.${n}) (attrNames f);
      n = builtins.head hosts;
    in
    if hosts == [ ] then
      "the host sets differ"
    else
      "host ${n}:\n  fast:      ${toJSON f.${n}.aspects}\n  reference: ${toJSON r.${n}.aspects}";

  acyclic = genList (
    i:
    let
      seed = i + 1;
      d = generate { inherit seed; };
      f = view (fast d);
      r = view (reference d);
    in
    if f == r then f else fail "seed ${toString seed}: the engines differ at ${firstDifference f r}"
  ) 40;

  cyclic = genList (
    i:
    let
      seed = i + 100;
      d = generate {
        inherit seed;
        cyclic = true;
      };
      try = engine: tryEval (deepSeq (view (engine d)) (view (engine d)));
      f = try fast;
      r = try reference;
    in
    if f.success != r.success then
      fail "seed ${toString seed} (cyclic): fast ${if f.success then "succeeds" else "fails"}, reference ${
        if r.success then "succeeds" else "fails"
      }"
    else if f.success && f.value != r.value then
      fail "seed ${toString seed} (cyclic): the engines differ at ${firstDifference f.value r.value}"
    else
      f.success
  ) 20;

  hosts = concatLists (map attrValues acyclic);
  keys = concatLists (map (h: h.aspects) hosts);
  count = re: length (filter (k: match re k != null) keys);
  counts = {
    placed = length keys;
    perUser = count ".*@.*";
    anonymous = count ".*/.*";
    nested = count ".*\\..*";
    withContext = length (filter (h: h.context != { }) hosts);
    withHome = length (filter (h: h.home != { } && all (m: m != [ ]) (attrValues h.home)) hosts);
    cyclicFailed = length (filter (ok: !ok) cyclic);
    cyclicPassed = length (filter (ok: ok) cyclic);
  };
  thin = filter (k: counts.${k} == 0) (attrNames counts);
in
if thin != [ ] then
  fail "the seeds never produce: ${toString thin} (${toJSON counts})"
else
  deepSeq acyclic true
