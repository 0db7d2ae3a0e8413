# A host module with one runner of every kind and a sweep, shared by the
# runner and propagation tests.
{ pkgs, ... }:
{
  networking.hostName = "allkinds";

  waymark.harness = {
    enable = true;
    environment.LANG = "C.UTF-8";
  };
  waymark.harness.packages = with pkgs; [
    bash
    coreutils
    gitMinimal
    # The gitea-actions registration script's grep and sed; woodpecker's
    # clone step.
    gnugrep
    gnused
    woodpecker-plugin-git
  ];

  waymark.runners = {
    forgejo = {
      kind = "gitea-actions";
      giteaActions = {
        url = "https://forge.example.com";
        tokenFile = "/run/secrets/forgejo";
      };
    };
    woodpecker = {
      kind = "woodpecker";
      woodpecker.server = "ci.example.com:9000";
    };
    drone = {
      kind = "drone-exec";
      drone = {
        rpcHost = "drone.example.com";
        secretFile = "/run/secrets/drone.env";
        labels.pool = "nix";
      };
    };
    poller = {
      kind = "command";
      command = "ci/poll --forever";
      extraGroups = [ "kvm" ];
    };
  };

  waymark.sweeps.nightly = {
    command = "ci/run-tests";
    schedule = "daily";
  };
}
