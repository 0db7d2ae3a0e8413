{
  description = "Rust tools for deploying NixOS fleets through gates";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs, ... }@inputs:
    let
      inherit (nixpkgs) lib;

      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      # Calls `f` once per system; every per-system output file takes this set.
      eachSystem =
        f:
        lib.genAttrs systems (
          system:
          f {
            inherit self inputs lib system;
            pkgs = nixpkgs.legacyPackages.${system};
          }
        );
    in
    {
      packages = eachSystem (import ./nix/packages.nix);
      apps = eachSystem (import ./nix/apps.nix);
      checks = eachSystem (import ./checks);
      devShells = eachSystem (import ./nix/dev-shells.nix);
      formatter = eachSystem (import ./nix/formatter.nix);

      nixosModules = {
        harness = ./modules/harness.nix;
        runners = ./modules/runners.nix;
        sweeps = ./modules/sweeps.nix;
        known-good = ./modules/known-good.nix;
        deploy = ./modules/deploy.nix;
        serve = ./modules/serve.nix;
        converge = ./modules/converge.nix;
        default = ./modules/default.nix;
      };

      # The example hosts of hosts/; checks.<system>.host-<name> evaluates them.
      nixosConfigurations = import ./hosts { inherit self nixpkgs; };

      templates.default = {
        path = ./templates/default;
        description = "A NixOS fleet deployed with Waymark";
      };
      templates.aspects = {
        path = ./templates/aspects;
        description = "A NixOS fleet composed from hosts, aspects and policies (lib.compose), deployed with Waymark";
      };

      # Pure Nix functions (no pkgs): `lib.fleet nixosConfigurations`.
      lib = import ./nix/lib { inherit lib; };
    };
}
