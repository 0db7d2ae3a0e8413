{
  description = "A NixOS fleet composed from aspects, deployed with Waymark";

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

      # Hosts, the aspects they are made of, and the policies that add
      # aspects by what a host is (fleet/*.nix). `nix eval .#composed.hosts.web1.aspects`
      # shows what a host got, in order.
      composed = waymark.lib.compose {
        hosts = import ./fleet/hosts.nix;
        aspects = import ./fleet/aspects.nix;
        policies = import ./fleet/policies.nix;
      };
    in
    {
      inherit composed;

      # One nixosSystem per host: Waymark's modules, then the host's.
      nixosConfigurations = composed.nixosConfigurations {
        inherit (nixpkgs.lib) nixosSystem;
        modules = [ waymark.nixosModules.default ];
      };

      # What `waymark fleet` and the deploy read: hosts, declarations, order.
      waymark = waymark.lib.fleet self.nixosConfigurations;

      # `nix flake check` does not notice a host that fails to evaluate, so
      # evaluate each host's toplevel (without building it), and check the
      # fleet's deploy declarations.
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
