# Nested aspects: `provides.<child>` declares an aspect named
# "parent.child", included by that name; a parent does not include its
# children by itself. Ports Den's nested-aspect cases (docs/compose.md).
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
  mark = n: { nixos.marks = [ n ]; };
in
t.all [
  (t.eq "a nested aspect by its path" [ "apps.editor" ] (
    (host {
      apps.provides.editor = mark "editor";
    } [ "apps.editor" ]).aspects
  ))
  (t.eq "a parent does not bring its children" [ "apps" ] (
    (host {
      apps = mark "apps" // {
        provides.editor = mark "editor";
      };
    } [ "apps" ]).aspects
  ))
  # Den: deep-nested-namespace / deadbugs/external-namespace-deep-aspect.
  (t.eq "three levels deep" [ { marks = [ "deep" ]; } ] (
    t.partsOf (host {
      a.provides.b.provides.c = mark "deep";
    } [ "a.b.c" ])
  ))
  (t.eq "a nested aspect and a top-level one of the same short name are two" [ "b" "a.b" ] (
    (host {
      b = mark "top";
      a.provides.b = mark "nested";
    } [ "b" "a.b" ]).aspects
  ))
  # Den: deadbugs/issue-460 (sub-aspects of one parent, each with its own
  # includes, included from a user's aspect).
  (t.eq "sibling sub-aspects with their own includes" [ "apps.a" "unfree" "apps.b" ] (
    (host {
      unfree = mark "unfree";
      apps.provides = {
        a = mark "a" // { includes = [ "unfree" ]; };
        b = mark "b" // { includes = [ "unfree" ]; };
      };
    } [ "apps.a" "apps.b" ]).aspects
  ))
  # Den: deadbugs/issue-423 (a static sub-aspect included from its
  # parametric parent keeps its own config): the parent's parametric part
  # is a function in its includes.
  (t.eq "a static child from its parent's parametric include" [ { marks = [ "networkmanager" ]; } ] (
    t.partsOf (host {
      role = {
        provides.sub = mark "networkmanager";
        includes = [ ({ host, ... }: { includes = [ "role.sub" ]; }) ];
      };
    } [ "role" ])
  ))
  (t.eq "a child includes its siblings and its parent's parent by name" [ "a.x" "a.y" "a" ] (
    (host {
      a = {
        provides.x.includes = [ "a.y" ];
        provides.y.includes = [ "a" ];
      };
    } [ "a.x" ]).aspects
  ))
  # Den: auto-parametric test-second-provides-helper-owned-config-preserved.
  (t.eq "a nested aspect's own part and its parametric include both apply" [
    { marks = [ "owned" ]; }
    { marks = [ "igloo" ]; }
  ] (
    t.partsOf (host {
      second.provides.with-owned = mark "owned" // {
        includes = [ ({ host, ... }: mark host.name) ];
      };
      helper.includes = [ "second.with-owned" ];
    } [ "helper" ])
  ))
]
