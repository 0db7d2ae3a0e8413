# The example hosts as `nixosConfigurations`: every directory here with a
# configuration.nix, with Waymark's modules imported.
{ self, nixpkgs }:
let
  inherit (nixpkgs) lib;
  names = lib.attrNames (
    lib.filterAttrs (
      name: type: type == "directory" && builtins.pathExists (./. + "/${name}/configuration.nix")
    ) (builtins.readDir ./.)
  );
in
lib.genAttrs names (
  name:
  nixpkgs.lib.nixosSystem {
    modules = [
      self.nixosModules.default
      (./. + "/${name}/configuration.nix")
    ];
  }
)
