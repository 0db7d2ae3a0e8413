# The flake's `lib`: pure Nix functions, no pkgs.
{ lib }:
{
  fleet = import ./fleet.nix { inherit lib; };
  # `fleetWith { deployAll = true; }`: the same, with fleet-wide settings.
  fleetWith = settings: import ./fleet.nix { inherit lib settings; };
  # `compose { hosts; aspects; policies; }`: hosts and reusable aspects
  # resolved to each host's modules and deploy declaration (docs/compose.md).
  compose = import ./compose { inherit lib; };
  # `composeWith { engine = "reference"; }`: the same, with settings.
  composeWith = settings: import ./compose { inherit lib settings; };
}
