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
    { nixpkgs, waymark, ... }:
    {
      nixosConfigurations.example = nixpkgs.lib.nixosSystem {
        modules = [
          waymark.nixosModules.default

          # A placeholder host: replace it with the real host's configuration,
          # usually ./hosts/<name>/configuration.nix and its hardware file.
          {
            nixpkgs.hostPlatform = "x86_64-linux";
            boot.loader.grub.device = "nodev";
            fileSystems."/" = {
              device = "/dev/disk/by-label/nixos";
              fsType = "ext4";
            };
            system.stateVersion = "26.05";
          }
        ];
      };
    };
}
