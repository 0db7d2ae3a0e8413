# Excludes: an aspect's `excludes` hold in its subtree, a host's and its
# policies' everywhere; an excluded aspect brings nothing it includes.
# Ports Den's constraint cases (docs/compose.md).
{ compose, t, ... }:
let
  fleet =
    aspects: hostDecl:
    (compose {
      inherit aspects;
      hosts.igloo = {
        system = "x86_64-linux";
      }
      // hostDecl;
    }).hosts.igloo;
  names = aspects: roots: (fleet aspects { aspects = roots; }).aspects;
  mark = n: { nixos.marks = [ n ]; };
in
t.all [
  # Den: fx-constraints test-scoped-exclude-in-subtree and
  # test-classCollectorHandler-skips-tombstones.
  (t.eq "an aspect's excludes hold below it" [ "root" "keep" ] (
    names {
      root = {
        excludes = [ "drop" ];
        includes = [ "keep" "drop" ];
      };
      keep = mark "keep";
      drop = mark "drop";
    } [ "root" ]
  ))
  (t.eq "and further down" [ "root" "mid" "keep" ] (
    names {
      root = {
        excludes = [ "drop" ];
        includes = [ "mid" ];
      };
      mid.includes = [ "keep" "drop" ];
      keep = mark "keep";
      drop = mark "drop";
    } [ "root" ]
  ))
  # Den: fx-constraints test-scoped-exclude-outside-subtree.
  (t.eq "but not beside it" [ "a" "b" "drop" ] (
    names {
      a.excludes = [ "drop" ];
      b.includes = [ "drop" ];
      drop = mark "drop";
    } [ "a" "b" ]
  ))
  # Den: fx-constraints test-global-exclude-ignores-chain.
  (t.eq "a host's excludes hold everywhere" [ "a" "b" ] (
    (fleet {
      a.includes = [ "drop" ];
      b.includes = [ "drop" ];
      drop = mark "drop";
    } {
      aspects = [ "a" "b" ];
      excludes = [ "drop" ];
    }).aspects
  ))
  # Den: fx-constraints test-excludes-sugar / test-handleWith-list.
  (t.eq "several excludes" [ "root" "c" ] (
    names {
      root = {
        excludes = [ "a" "b" ];
        includes = [ "a" "b" "c" ];
      };
      a = mark "a";
      b = mark "b";
      c = mark "c";
    } [ "root" ]
  ))
  (t.eq "an excluded aspect brings nothing it includes" [ "root" ] (
    names {
      root = {
        excludes = [ "desktop" ];
        includes = [ "desktop" ];
      };
      desktop.includes = [ "fonts" ];
      fonts = mark "fonts";
    } [ "root" ]
  ))
  (t.eq "what it includes still comes along another path" [ "root" "fonts" ] (
    names {
      root = {
        excludes = [ "desktop" ];
        includes = [ "desktop" "fonts" ];
      };
      desktop.includes = [ "fonts" ];
      fonts = mark "fonts";
    } [ "root" ]
  ))
  # The walk's one subtle case: an aspect first reached where something
  # below it is excluded, then again where it is not. The second visit
  # brings what the first left out.
  (t.eq "an aspect reached again outside an exclusion brings what was excluded" [ "a" "shared" "b" "extra" ] (
    names {
      a = {
        excludes = [ "extra" ];
        includes = [ "shared" ];
      };
      b.includes = [ "shared" ];
      shared.includes = [ "extra" ];
      extra = mark "extra";
    } [ "a" "b" ]
  ))
  (t.eq "reached again inside a wider exclusion, it brings nothing more" [ "a" "shared" "extra" "b" ] (
    names {
      a.includes = [ "shared" ];
      b = {
        excludes = [ "other" ];
        includes = [ "shared" ];
      };
      shared.includes = [ "extra" ];
      extra = mark "extra";
    } [ "a" "b" ]
  ))
  (t.eq "a nested aspect excluded by its name" [ "root" "apps.b" ] (
    names {
      apps.provides = {
        a = mark "a";
        b = mark "b";
      };
      root = {
        excludes = [ "apps.a" ];
        includes = [ "apps.a" "apps.b" ];
      };
    } [ "root" ]
  ))
  (t.eq "a user's walk keeps the host's excludes" [ ] (
    (fleet {
      drop = mark "drop";
    } {
      excludes = [ "drop" ];
      users.tux.aspects = [ "drop" ];
    }).aspects
  ))
  (t.eq "an exclude names the written name or its substitute" [ [ "root" ] [ "root" ] ] (
    map
      (
        excluded:
        (compose {
          aspects = {
            root.includes = [ "old" ];
            old = mark "old";
            new = mark "new";
          };
          policies.swap = {
            substitutes.old = "new";
            excludes = [ excluded ];
          };
          hosts.igloo = {
            system = "x86_64-linux";
            aspects = [ "root" ];
          };
        }).hosts.igloo.aspects
      )
      [
        "old"
        "new"
      ]
  ))
]
