# The fleet's one host. Replace the placeholder hardware with the host's
# hardware-configuration.nix.
{ lib, ... }:
{
  networking.hostName = "example";

  # How Waymark deploys this host (see waymark.deploy.* in the Waymark
  # modules): over SSH as root, built where Waymark runs, confirmed once
  # sshd is still up after activation.
  waymark.deploy = {
    enable = true;
    targetHost = "192.0.2.10";
    tags = [ "example" ];
    healthChecks = [
      {
        name = "sshd";
        command = "systemctl is-active --quiet sshd.service";
      }
    ];
  };

  # The directories `waymark known-good` keeps its GC roots and records in.
  waymark.knownGood.enable = true;

  services.openssh.enable = true;

  # Placeholder hardware.
  nixpkgs.hostPlatform = lib.mkDefault "x86_64-linux";
  boot.loader.grub.device = lib.mkDefault "nodev";
  fileSystems."/" = lib.mkDefault {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
  };

  system.stateVersion = "26.05";
}
