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

      nixosModules.default = ./modules/default.nix;

      templates.default = {
        path = ./templates/default;
        description = "A NixOS fleet deployed with Waymark";
      };

      # Pure Nix functions (no pkgs) arrive with the deploy work.
      lib = { };
    };
}
