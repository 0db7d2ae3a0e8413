# Skip on a missing argument: a parametric aspect whose required argument
# the context lacks contributes nothing, nor does what it includes. Ports
# Den's never-matches and strict-helper cases (docs/compose.md).
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
  mark = n: { nixos.marks = [ n ]; };
in
t.all [
  # Den: parametric-context test-never-matches-aspect-skipped.
  (t.eq "an aspect for a context key nobody sets is skipped" [ "igloo" "hostname" ] (
    (fleet {
      hostname = { host, ... }: mark host.name;
      never-matches = { never-exists, ... }: mark "NEVER";
      igloo.includes = [
        "hostname"
        "never-matches"
      ];
    } { aspects = [ "igloo" ]; }).hosts.igloo.aspects
  ))
  (t.eq "what a skipped aspect includes is not looked at (no error for an unknown name)" [ ] (
    (fleet {
      skipped = { never-exists, ... }: { includes = [ "not-declared" ]; };
    } { aspects = [ "skipped" ]; }).hosts.igloo.aspects
  ))
  # Den: auto-parametric test-explicit-exactly-not-overridden-by-default:
  # an aspect needing { host, user } is skipped at the host's level and
  # applies at each user's.
  (t.eq "a { host, user } aspect applies per user only" [ "strict-helper@tux" ] (
    (fleet {
      strict-helper = { host, user }: mark "strict-${host.name}-${user.name}";
    } {
      aspects = [ "strict-helper" ];
      users.tux.aspects = [ "strict-helper" ];
    }).hosts.igloo.aspects
  ))
  (t.eq "an argument with a default is not required" [ { marks = [ "igloo-none" ]; } ] (
    t.partsOf (
      (fleet {
        opt = { host, region ? "none" }: mark "${host.name}-${region}";
      } { aspects = [ "opt" ]; }).hosts.igloo
    )
  ))
  (t.eq "a skipped aspect is not taken as placed: the user's walk places it" [ "u@tux" ] (
    (fleet {
      u = { user, ... }: mark user.name;
    } {
      aspects = [ "u" ];
      users.tux.aspects = [ "u" ];
    }).hosts.igloo.aspects
  ))
  (t.eq "a skipped inline function in includes" [ "a" ] (
    (fleet {
      a = mark "a" // { includes = [ ({ nope }: mark "nope") ]; };
    } { aspects = [ "a" ]; }).hosts.igloo.aspects
  ))
  (t.eq "a policy for a missing key is skipped too" [ ] (
    (compose {
      policies.never = { never-exists }: { includes = [ "not-declared" ]; };
      hosts.igloo.system = "x86_64-linux";
    }).hosts.igloo.aspects
  ))
]
