# The NixOS modules of Waymark, one file each, all imported here: a fleet
# imports `waymark.nixosModules.default` and enables what it uses. Nothing is
# enabled by default.
{
  imports = [
    ./harness.nix
    ./runners.nix
    ./sweeps.nix
    ./known-good.nix
    ./deploy.nix
    ./serve.nix
    ./converge.nix
  ];
}
