# Reusable aspects: each has a NixOS part, a deploy part (waymark.deploy
# settings; tags add up), and what it includes. A function of the context
# (`{ host, ... }:`) is called per host; one that needs `user` per user.
{
  # Every host: sshd, the known-good roots, a health check.
  base = {
    nixos = {
      services.openssh.enable = true;
      waymark.knownGood.enable = true;
      system.stateVersion = "26.05";
    };
    deploy.healthChecks = [
      {
        name = "sshd";
        command = "systemctl is-active --quiet sshd.service";
      }
    ];
    includes = [ "hardware" ];
  };

  # Placeholder hardware: replace with each host's hardware-configuration.nix
  # (an aspect per host, or a path in the host's aspects).
  hardware.nixos =
    { lib, ... }:
    {
      boot.loader.grub.device = lib.mkDefault "nodev";
      fileSystems."/" = lib.mkDefault {
        device = "/dev/disk/by-label/nixos";
        fsType = "ext4";
      };
    };

  web = {
    includes = [
      "base"
      "built-remotely"
    ];
    nixos = {
      services.nginx.enable = true;
      networking.firewall.allowedTCPPorts = [ 80 ];
    };
    deploy = {
      tags = [ "web" ];
      healthChecks = [
        {
          name = "nginx";
          command = "systemctl is-active --quiet nginx.service";
        }
      ];
    };
  };

  # Built on the builder and signed there; deployed after it.
  built-remotely.deploy = {
    buildHost = "builder";
    dependsOn = [ "builder" ];
  };

  builder = {
    includes = [ "base" ];
    deploy = {
      tags = [ "builder" ];
      signingKeyFile = "/var/lib/waymark/signing-key.sec";
    };
  };

  # A user's aspect: called once per user that includes it.
  operator =
    { user, ... }:
    {
      nixos.users.users.${user.name} = {
        isNormalUser = true;
        extraGroups = [ "wheel" ];
      };
    };

  # Parametric on a policy's context: the site's tag.
  site = { site, ... }: { deploy.tags = [ "site-${site}" ]; };
}
