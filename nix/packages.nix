# The packages of one system: the `waymark` CLI, which is also the default.
{ pkgs, ... }:
let
  waymark = pkgs.callPackage ./waymark.nix { };
in
{
  inherit waymark;
  default = waymark;
}
