{
  description = "A NixOS fleet deployed with Waymark";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";
    waymark = {
      url = "github:waymark-nix/waymark";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      waymark,
      ...
    }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
    in
    {
      # One host; add more as `hosts/<name>/configuration.nix`.
      nixosConfigurations.example = nixpkgs.lib.nixosSystem {
        modules = [
          waymark.nixosModules.default
          ./hosts/example/configuration.nix
        ];
      };

      # `nix flake check` (the CI job in .github/workflows/check.yml) does not
      # notice a host that fails to evaluate, so evaluate each host's
      # toplevel here (without building it), and check the fleet's deploy
      # declarations with `waymark.lib.fleet`.
      # What `waymark fleet` and the deploy read: hosts, declarations, order.
      waymark = waymark.lib.fleet self.nixosConfigurations;

      checks.${system} = {
        fleet = pkgs.writeText "waymark-fleet.json" (builtins.toJSON self.waymark);
      }
      // nixpkgs.lib.mapAttrs' (
        name: host:
        nixpkgs.lib.nameValuePair "host-${name}" (
          pkgs.writeText "host-${name}-drv" (
            builtins.unsafeDiscardStringContext host.config.system.build.toplevel.drvPath
          )
        )
      ) self.nixosConfigurations;
    };
}
