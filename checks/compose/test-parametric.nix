# Parametric aspects: a function of the context (`{ host, user, ... }:`)
# called with it, wherever it is reached. Ports Den's parametric-context and
# auto-parametric cases (docs/compose.md).
{ compose, t, ... }:
let
  fleet =
    aspects: hostDecl:
    compose {
      inherit aspects;
      hosts.igloo = {
        system = "x86_64-linux";
      }
      // hostDecl;
    };
  host = aspects: roots: (fleet aspects { aspects = roots; }).hosts.igloo;
  mark = n: { nixos.marks = [ n ]; };
in
t.all [
  # Den: parametric-context test-parametric-forwards-context.
  (t.eq "the host's name reaches an include of an include" [ { marks = [ "igloo" ]; } ] (
    t.partsOf (host {
      foo.includes = [ ({ host, ... }: mark host.name) ];
    } [ "foo" ])
  ))
  # Den: parametric-context test-parametric-owned-config.
  (t.eq "an aspect's own part beside empty includes" [ { marks = [ "owned" ]; } ] (
    t.partsOf (host { foo = mark "owned" // { includes = [ ]; }; } [ "foo" ])
  ))
  (t.eq "the host's facts are in the context" [ { marks = [ "eu-west" ]; } ] (
    t.partsOf (
      (fleet {
        region = { host, ... }: mark host.region;
      } {
        aspects = [ "region" ];
        region = "eu-west";
      }).hosts.igloo
    )
  ))
  # Den: auto-parametric test-helper-chain-propagates-host-ctx.
  (t.eq "a static chain passes the context to a function at its end" [ { marks = [ "igloo-ok" ]; } ] (
    t.partsOf (host {
      b.includes = [ ({ host, ... }: mark "${host.name}-ok") ];
      a.includes = [ "b" ];
    } [ "a" ])
  ))
  # Den: deadbugs/issue-442 (a parametric aspect included by a parametric
  # one), and its three-deep case.
  (t.eq "parametric in parametric in parametric" [ { marks = [ "git" ]; } { marks = [ "zsh" ]; } ] (
    t.partsOf (
      (fleet {
        shell = { user, ... }: mark "zsh";
        dev =
          { user, ... }:
          mark "git"
          // {
            includes = [ "shell" ];
          };
        role = { user, ... }: { includes = [ "dev" ]; };
      } { users.tux.aspects = [ "role" ]; }).hosts.igloo
    )
  ))
  # Den: parametric-context test-parametric-including-static-named-aspect
  # and test-parametric-including-mixed-owned-and-parametric.
  (t.eq "a parametric aspect including a static one with its own parametric part" [
    { marks = [ "git" ]; }
    { marks = [ "zsh-tux" ]; }
  ] (
    t.partsOf (
      (fleet {
        tools = mark "git" // {
          includes = [ ({ user, ... }: mark "zsh-${user.name}") ];
        };
        role = { user, ... }: { includes = [ "tools" ]; };
      } { users.tux.aspects = [ "role" ]; }).hosts.igloo
    )
  ))
  # Den: deadbugs/issue-311 (includes nested in a parametric include are
  # parametric too): the { host } part applies at the host's level and at
  # the user's, the { user } part at the user's only.
  (t.eq "nested includes are called with the user's context" [ "tux" "tux/0" "tux/0/0@tux" ] (
    (fleet {
      tux.includes = [
        (
          { host, ... }:
          {
            homeManager.keyboard = "${host.name}-nested";
            includes = [ ({ user, ... }: { homeManager.keyboard = "${user.name}-nested"; }) ];
          }
        )
      ];
    } { users.tux.aspects = [ "tux" ]; }).hosts.igloo.aspects
  ))
  (t.eq "the user's home gets both parts, host's first" [ { keyboard = "igloo-nested"; } { keyboard = "tux-nested"; } ] (
    map (m: builtins.head m.imports) (
      (fleet {
        tux.includes = [
          (
            { host, ... }:
            {
              homeManager.keyboard = "${host.name}-nested";
              includes = [ ({ user, ... }: { homeManager.keyboard = "${user.name}-nested"; }) ];
            }
          )
        ];
      } { users.tux.aspects = [ "tux" ]; }).hosts.igloo.home.tux
    )
  ))
  # Den: deadbugs/issue-460 (a parametric wrapper around named sub-aspects
  # keeps them).
  (t.eq "a parametric wrapper around named aspects" [ "tux" "tux/0" "apps.a" "apps.b" ] (
    (fleet {
      apps.provides = {
        a = mark "a";
        b = mark "b";
      };
      tux.includes = [ ({ host, ... }: { includes = [ "apps.a" "apps.b" ]; }) ];
    } { users.tux.aspects = [ "tux" ]; }).hosts.igloo.aspects
  ))
  # Den: parametric-context test-factory-in-nested-parametric-chain: a
  # factory is a Nix function returning an aspect, used inline.
  (t.eq "a factory's aspect inside a parametric chain" [ { marks = [ "hello" ]; } ] (
    let
      greeter = greeting: mark greeting;
    in
    t.partsOf (
      (fleet {
        role = { user, ... }: { includes = [ (greeter "hello") ]; };
      } { users.tux.aspects = [ "role" ]; }).hosts.igloo
    )
  ))
  # Den: identity-preservation test-parametric-aspect-preserves-name and
  # test-parametric-child-preserves-name.
  (t.eq "a parametric aspect's module carries its name, at the top and below" [
    "waymark-compose:foo"
    "waymark-compose:bar"
  ] (
    map (p: p.key) (t.parts (host {
      foo =
        { host }:
        mark "foo"
        // {
          includes = [ "bar" ];
        };
      bar = { host }: mark "bar";
    } [ "foo" ]))
  ))
  (t.eq "a lambda without a pattern gets the whole context" [ { marks = [ "igloo" ]; } ] (
    t.partsOf (host { whole = ctx: mark ctx.host.name; } [ "whole" ])
  ))
  (t.eq "the user is in the context with its facts" [ { marks = [ "tux:fish" ]; } ] (
    t.partsOf (
      (fleet {
        shell = { user, ... }: mark "${user.name}:${user.shell}";
      } {
        users.tux = {
          shell = "fish";
          aspects = [ "shell" ];
        };
      }).hosts.igloo
    )
  ))
]
