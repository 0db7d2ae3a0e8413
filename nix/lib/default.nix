# The flake's `lib`: pure Nix functions, no pkgs.
{ lib }:
{
  fleet = import ./fleet.nix { inherit lib; };
}
