# Include dedup: an aspect reached along several paths contributes once, at
# its first place in the walk; an aspect without a name (inline, or a
# function in `includes`) has its parent's identity plus its position.
# Ports Den's dedup cases (docs/compose.md, "Den's cases").
{ compose, t, ... }:
let
  host =
    aspects: roots:
    (compose {
      inherit aspects;
      hosts.igloo = {
        system = "x86_64-linux";
        aspects = roots;
      };
    }).hosts.igloo;
  names = aspects: roots: (host aspects roots).aspects;
  mark = n: { nixos.marks = [ n ]; };
in
t.all [
  (t.eq "a diamond contributes its bottom once, where it is first reached" [ "a" "c" "b" ] (
    names {
      a = mark "a" // { includes = [ "c" ]; };
      b = mark "b" // { includes = [ "c" ]; };
      c = mark "c";
    } [ "a" "b" ]
  ))
  (t.eq "one module per aspect in the diamond" [ { marks = [ "a" ]; } { marks = [ "c" ]; } { marks = [ "b" ]; } ] (
    t.partsOf (host {
      a = mark "a" // { includes = [ "c" ]; };
      b = mark "b" // { includes = [ "c" ]; };
      c = mark "c";
    } [ "a" "b" ])
  ))
  # Den: deadbugs/issue-400 (the same aspects reached from several places
  # are applied once each).
  (t.eq "a root listed twice, and also included, is there once" [ "x" "y" ] (
    names {
      x = mark "x" // { includes = [ "y" ]; };
      y = mark "y";
    } [ "x" "y" "x" ]
  ))
  (t.eq "the same aspect from the host and from a policy: once" [ "base" ] (
    (compose {
      aspects.base = mark "base";
      policies.everywhere.includes = [ "base" ];
      hosts.igloo = {
        system = "x86_64-linux";
        aspects = [ "base" ];
      };
    }).hosts.igloo.aspects
  ))
  # Den: parametric.nix test-dedup-parametric (a shared parametric aspect
  # reached from two places contributes once).
  (t.eq "a parametric aspect on two paths contributes once" [ { marks = [ "shared-igloo" ]; } ] (
    builtins.filter (p: p.marks != [ "a" ] && p.marks != [ "b" ]) (
      t.partsOf (host {
        shared =
          { host }:
          {
            nixos.marks = [ "shared-${host.name}" ];
          };
        a = mark "a" // { includes = [ "shared" ]; };
        b = mark "b" // { includes = [ "shared" ]; };
      } [ "a" "b" ])
    )
  ))
  # Den: parametric.nix test-fixedTo-deep-chain (an anonymous aspect
  # listed 20 times contributes 20 times: it has no name to be one by).
  (t.eq "an inline aspect written twice is two aspects" 3 (
    builtins.length (
      (host {
        top = {
          includes = [
            (mark "inline")
            (mark "inline")
          ];
        };
      } [ "top" ]).modules
    )
  ))
  (t.eq "an inline aspect under a deduplicated parent is there once" [ "p" "p/0" "q" ] (
    names {
      p = {
        includes = [ (mark "in-p") ];
      };
      q = {
        includes = [ "p" ];
      };
    } [ "p" "q" ]
  ))
  (t.eq "the module keys are the aspects' names" [ "waymark-compose:a" "waymark-compose:c" "waymark-compose:b" ] (
    map (p: p.key) (t.parts (host {
      a = mark "a" // { includes = [ "c" ]; };
      b = mark "b" // { includes = [ "c" ]; };
      c = mark "c";
    } [ "a" "b" ]))
  ))
  # Users: a static aspect two users include is the host's once; one whose
  # content depends on the user is there once per user.
  (t.eq "two users, one static aspect and one per user" [ "shell@alice" "tools" "shell@bob" ] (
    (compose {
      aspects = {
        tools = mark "tools";
        shell =
          { user, ... }:
          {
            nixos.marks = [ "shell-${user.name}" ];
            includes = [ "tools" ];
          };
      };
      hosts.igloo = {
        system = "x86_64-linux";
        users.alice.aspects = [ "shell" ];
        users.bob.aspects = [ "shell" "tools" ];
      };
    }).hosts.igloo.aspects
  ))
]
