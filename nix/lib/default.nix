# The flake's `lib`: pure Nix functions, no pkgs.
{ lib }:
{
  fleet = import ./fleet.nix { inherit lib; };
  # `fleetWith { deployAll = true; }`: the same, with fleet-wide settings.
  fleetWith = settings: import ./fleet.nix { inherit lib settings; };
}
