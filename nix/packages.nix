# The packages of one system: the `waymark` CLI, which is also the default, and the same
# with its demo.
{ pkgs, ... }:
let
  waymark = pkgs.callPackage ./waymark.nix { };
  # The same program with `waymark demo` (and the test lab it stands on): `nix run .#demo`.
  waymark-demo = pkgs.callPackage ./waymark.nix { withDemo = true; };
in
{
  inherit waymark waymark-demo;
  default = waymark;
}
