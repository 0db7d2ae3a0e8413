# Policies: functions of the host's context that add to it, and include,
# exclude or substitute aspects; they run until the context settles. Ports
# Den's context-transition (`into`) and includeIf cases (docs/compose.md).
{ compose, composeWith, t, ... }:
let
  fleet =
    {
      aspects ? { },
      policies,
      host ? { },
    }:
    (compose {
      inherit aspects policies;
      hosts.igloo = {
        system = "x86_64-linux";
      }
      // host;
    }).hosts.igloo;
  mark = n: { nixos.marks = [ n ]; };
in
t.all [
  # Den: custom-ctx test-ctx-into (a context derived from another: hello ->
  # shout), read by an aspect.
  (t.eq "a policy's context reaches the aspects" [ { marks = [ "WORLD" ]; } ] (
    t.partsOf (fleet {
      policies.shout =
        { host, ... }:
        {
          context.shout = if host.hello == "world" then "WORLD" else "?";
        };
      aspects.greeting = { shout, ... }: mark shout;
      host = {
        hello = "world";
        aspects = [ "greeting" ];
      };
    })
  ))
  (t.eq "the settled context is in the output" { shout = "WORLD"; } (
    (fleet {
      policies.shout = { host, ... }: { context.shout = "WORLD"; };
    }).context
  ))
  # Den: ctx-chain / nested-ctx (a context built from a context built from
  # the host): policy b needs what a sets, so it runs in the next round.
  (t.eq "a policy reading another's context" [ "eu-audit" ] (
    (fleet {
      policies = {
        a-region = { host, ... }: { context.region = host.datacenter; };
        b-compliance =
          { region, ... }:
          {
            includes = if region == "eu" then [ "eu-audit" ] else [ ];
          };
      };
      aspects.eu-audit = mark "audit";
      host.datacenter = "eu";
    }).aspects
  ))
  (t.eq "a chain of three settles" { a = 1; b = 2; c = 3; } (
    (fleet {
      policies = {
        z = { host, ... }: { context.a = 1; };
        y = { a, ... }: { context.b = a + 1; };
        x = { b, ... }: { context.c = b + 1; };
      };
    }).context
  ))
  # Den: fx-includeIf test-guard-passes-includes / test-guard-fails-tombstones.
  (t.eq "a guard that holds includes; one that fails includes nothing" [ [ "feature" ] [ ] ] (
    map (
      on:
      (fleet {
        policies.guard = { host, ... }: { includes = if host.wantsFeature then [ "feature" ] else [ ]; };
        aspects.feature = mark "feature";
        host.wantsFeature = on;
      }).aspects
    ) [ true false ]
  ))
  (t.eq "a policy excludes an aspect a host includes" [ "web" ] (
    (fleet {
      policies.no-debug.excludes = [ "debug" ];
      aspects = {
        web = mark "web" // { includes = [ "debug" ]; };
        debug = mark "debug";
      };
      host.aspects = [ "web" ];
    }).aspects
  ))
  # Den: fx-constraints test-substitute-declaration / -via-registry.
  (t.eq "a policy substitutes one aspect for another, in its place" [ "web" "nginx-hardened" "tail" ] (
    (fleet {
      policies.harden.substitutes.nginx = "nginx-hardened";
      aspects = {
        web = mark "web" // { includes = [ "nginx" "tail" ]; };
        nginx = mark "nginx";
        nginx-hardened = mark "hardened";
        tail = mark "tail";
      };
      host.aspects = [ "web" ];
    }).aspects
  ))
  (t.eq "policies add their includes after the host's, in their names' order" [ "own" "from-a" "from-b" ] (
    (fleet {
      policies = {
        b.includes = [ "from-b" ];
        a.includes = [ "from-a" ];
      };
      aspects = {
        own = mark "own";
        from-a = mark "a";
        from-b = mark "b";
      };
      host.aspects = [ "own" ];
    }).aspects
  ))
  (t.eq "a static policy applies to every host" [ [ "base" ] [ "base" ] ] (
    let
      f = compose {
        policies.base.includes = [ "base" ];
        aspects.base = mark "base";
        hosts = {
          a.system = "x86_64-linux";
          b.system = "aarch64-linux";
        };
      };
    in
    [
      f.hosts.a.aspects
      f.hosts.b.aspects
    ]
  ))
  (t.eq "a policy may include an inline aspect or a function" [ { marks = [ "inline" ]; } { marks = [ "igloo" ]; } ] (
    t.partsOf (fleet {
      policies.p.includes = [
        (mark "inline")
        ({ host, ... }: mark host.name)
      ];
    })
  ))
  (t.throws "two policies disagreeing on a context key" (
    fleet {
      policies = {
        a.context.tier = "gold";
        b.context.tier = "silver";
      };
    }
  ).context)
  (t.eq "two policies agreeing on a context key" { tier = "gold"; } (
    (fleet {
      policies = {
        a.context.tier = "gold";
        b.context.tier = "gold";
      };
    }).context
  ))
  (t.throws "a policy that feeds on its own output never settles" (
    fleet {
      policies.counter = { n ? 0, ... }: { context.n = n + 1; };
    }
  ).context)
  # Three chained policies settle in the fourth round (the first that
  # adds nothing).
  (t.eq "maxPolicyRounds bounds the rounds" [ true false ] (
    map (
      rounds:
      (builtins.tryEval
        ((composeWith { maxPolicyRounds = rounds; }) {
          policies = {
            z = { host, ... }: { context.a = 1; };
            y = { a, ... }: { context.b = a + 1; };
            x = { b, ... }: { context.c = b + 1; };
          };
          hosts.igloo.system = "x86_64-linux";
        }).hosts.igloo.context.c
      ).success
    ) [ 4 3 ]
  ))
]
