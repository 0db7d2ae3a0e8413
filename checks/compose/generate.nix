# Random declarations for lib.compose from a seed, in pure Nix: hosts with
# facts and users, aspects (static, parametric on the host, the user, a
# policy's context, or the whole context; nested; with inline and
# parametric includes and scoped excludes), and policies (static, reading
# the host, reading another policy's context; including, excluding,
# substituting). Every part is plain data, so two results compare with ==.
#
# Includes go to aspects of higher numbers, so there is no cycle unless
# `cyclic` (then some go anywhere, and both engines must fail alike).
# Used by both-generated.nix and bench/compose.sh.
{
  seed,
  hosts ? 6,
  aspects ? 30,
  policies ? 5,
  users ? 2,
  # The most includes an aspect has, and aspects a host lists.
  fanout ? 4,
  roots ? 5,
  cyclic ? false,
}:
let
  inherit (builtins)
    elemAt
    genList
    listToAttrs
    ;

  mod = a: b: a - b * (a / b);
  # Two steps of a linear congruential generator from the seed and a salt:
  # the same (seed, salt) always gives the same number. Written out, as
  # the generator's arithmetic is part of what the benchmark times.
  m = 2147483648;
  pick =
    kind: i: j: n:
    let
      x0 = seed * 7919 + (kind * 10000000 + i * 1000 + j) * 104729;
      x1 = x0 - m * (x0 / m);
      y1 = x1 * 1103515245 + 12345;
      x2 = y1 - m * (y1 / m);
      y2 = x2 * 1103515245 + 12345;
      q = (y2 - m * (y2 / m)) / 65536;
    in
    if n <= 0 then 0 else q - n * (q / n);

  N = aspects;
  name = i: "a${toString i}";

  # Each aspect's random choices, drawn once: the parametric aspects below
  # are called per host and user, and should cost what a real aspect costs,
  # not the generator's arithmetic.
  drawn = genList (i: rec {
    kind = pick 1 i 0 10;
    hasSub = kind < 6 && pick 5 i 0 4 == 0;
    includes = includesOf i;
    excludes = excludesOf i;
    home = pick 8 i 0 3 == 0;
    tag = if pick 9 i 0 4 == 0 then "t${toString (mod i 7)}" else null;
  }) (N + 1);
  kindOf = i: (elemAt drawn i).kind;
  hasSub = i: (elemAt drawn i).hasSub;

  # An include target of aspect i: a higher one (or any, when cyclic).
  target =
    i: j:
    let
      anywhere = cyclic && pick 10 i j 6 == 0;
      t = if anywhere then pick 3 i j N else i + 1 + pick 3 i j (N - i - 1);
    in
    if hasSub t && pick 6 i j 3 == 0 then "${name t}.s" else name t;
  canInclude = i: cyclic || i < N - 1;

  includesOf =
    i:
    if !(canInclude i) then
      [ ]
    else
      genList (
        j:
        let
          tgt = target i j;
          form = pick 4 i j 8;
        in
        if form == 0 then
          {
            nixos.marks = [ "inline-${toString i}-${toString j}" ];
            includes = [ tgt ];
          }
        else if form == 1 then
          (
            { host, ... }:
            {
              nixos.marks = [ "fn-${toString i}-${host.name}" ];
              includes = if host.even then [ tgt ] else [ ];
            }
          )
        else if form == 2 then
          (
            { user, ... }:
            {
              homeManager.marks = [ "ufn-${toString i}-${user.name}" ];
              includes = [ tgt ];
            }
          )
        else
          tgt
      ) (pick 2 i 0 fanout);

  excludesOf =
    i: if canInclude i && pick 7 i 0 5 == 0 then [ (name (i + 1 + pick 7 i 1 (N - i - 1))) ] else [ ];

  partsOf =
    i: label:
    {
      nixos.marks = [ label ];
    }
    // (if (elemAt drawn i).home then { homeManager.marks = [ label ]; } else { })
    // (if (elemAt drawn i).tag != null then { deploy.tags = [ (elemAt drawn i).tag ]; } else { });

  body =
    i: label:
    partsOf i label
    // {
      inherit (elemAt drawn i) includes excludes;
    };

  aspect =
    i:
    let
      k = kindOf i;
      flag = "flag${toString (pick 11 i 0 5)}";
    in
    if k < 6 then
      body i (name i)
      // (
        if hasSub i then
          {
            provides.s = partsOf (i + 1) "${name i}.s" // {
              includes = if i < N - 1 then [ (name (i + 1 + pick 12 i 0 (N - i - 1))) ] else [ ];
            };
          }
        else
          { }
      )
    else if k == 6 then
      { host, ... }:
      body i "${name i}-${host.name}"
      // {
        includes = if host.third then [ ] else (elemAt drawn i).includes;
      }
    else if k == 7 then
      { host, user, ... }: body i "${name i}-${user.name}@${host.name}"
    else if k == 8 then
      # Needs a policy's context key: skipped where no policy set it.
      args: body i "${name i}-${toString args.${flag}}"
    else
      ctx: body i "${name i}-${if ctx ? user then ctx.user.name else "host"}";

  # Kind 8 reads one context key by name: a lambda with that formal.
  withFlag =
    i: f:
    let
      flag = "flag${toString (pick 11 i 0 5)}";
    in
    if kindOf i == 8 then
      builtins.getAttr flag {
        flag0 = { flag0, ... }@a: f a;
        flag1 = { flag1, ... }@a: f a;
        flag2 = { flag2, ... }@a: f a;
        flag3 = { flag3, ... }@a: f a;
        flag4 = { flag4, ... }@a: f a;
      }
    else
      f;

  randomNames = kind: i: count: genList (j: name (pick kind i (j + 1) N)) (pick kind i 0 count);

  host = h: {
    name = "h${toString h}";
    value = {
      system = if mod h 2 == 0 then "x86_64-linux" else "aarch64-linux";
      n = h;
      region = pick 20 h 0 3;
      # Facts the parametric aspects branch on, drawn here rather than at
      # each call.
      even = mod h 2 == 0;
      third = mod h 3 == 0;
      aspects = randomNames 21 h roots;
      excludes = if pick 22 h 0 4 == 0 then [ (name (pick 22 h 1 N)) ] else [ ];
      users = listToAttrs (
        genList (u: {
          name = "u${toString u}";
          value.aspects = randomNames 23 (h * 10 + u) 4;
        }) (pick 24 h 0 (users + 1))
      );
      deploy.targetHost = "192.0.2.${toString (h + 1)}";
    };
  };

  policy =
    p:
    let
      kind = pick 30 p 0 5;
      flag = "flag${toString (mod p 5)}";
      some = randomNames 31 p 3;
    in
    {
      name = "p${toString p}";
      value =
        if kind == 0 then
          { includes = some; }
        else if kind == 1 then
          let
            region = pick 32 p 0 3;
          in
          { host, ... }: if host.region == region then { context.${flag} = "r${toString host.region}"; } else { }
        else if kind == 2 then
          # Reads a context key another policy sets: a later round.
          builtins.getAttr "flag${toString (pick 33 p 0 5)}" {
            flag0 = { flag0, ... }: { includes = some; };
            flag1 = { flag1, ... }: { includes = some; };
            flag2 = { flag2, ... }: { includes = some; };
            flag3 = { flag3, ... }: { includes = some; };
            flag4 = { flag4, ... }: { includes = some; };
          }
        else if kind == 3 then
          let
            drop = [ (name (pick 34 p 0 N)) ];
          in
          { host, ... }: { excludes = if host.even then [ ] else drop; }
        else
          let
            from = pick 35 p 0 (N - 1);
          in
          {
            substitutes.${name from} = name (from + 1 + pick 35 p 1 (N - from - 1));
          };
    };
in
{
  aspects = listToAttrs (
    genList (i: {
      name = name i;
      value = withFlag i (aspect i);
    }) N
  );
  hosts = listToAttrs (genList host hosts);
  policies = listToAttrs (genList policy policies);
}
