# ci: a CI host. Pushes run on a Forgejo Actions runner, and nightly and
# weekly sweeps run the slower suites; both, and a shell on the host, get
# their commands from the one `waymark.harness` declaration below, so a sweep
# cannot lack a tool the runner has. Deployed by Waymark, built on `builder`.
{ pkgs, ... }:
{
  imports = [ ../hardware.nix ];

  networking.hostName = "ci";

  waymark.harness.enable = true;
  # The only list of what the tests need. Written with its full option path:
  # checks/modules/lint.nix tells the declaration apart by it.
  waymark.harness.packages = with pkgs; [
    bash
    coreutils
    findutils
    gnugrep
    gnused
    gawk
    gitMinimal
    git-lfs
    # `script` gives the tests a pseudo-terminal.
    util-linux
    curl
    nodejs
    nix
  ];
  waymark.harness.python = {
    enable = true;
  };
  waymark.harness.python.packages = ps: [ ps.pytest ];
  waymark.harness.environment = {
    LANG = "C.UTF-8";
    PYTHONDONTWRITEBYTECODE = "1";
  };
  # What the three lists this declaration replaced (the runner's hostPackages,
  # the timer's path, the packages added to the host by hand) provided
  # between them; evaluation fails if the harness drops one.
  waymark.harness.mustProvide = [
    "bash"
    "git"
    "git-lfs"
    "script"
    "node"
    "python3"
    "pytest"
  ];
  waymark.harness.installOnHost = true;

  # Forgejo Actions: upstream's gitea-actions-runner module with Forgejo's
  # runner.
  services.gitea-actions-runner.package = pkgs.forgejo-runner;
  waymark.runners.forgejo = {
    kind = "gitea-actions";
    giteaActions = {
      url = "https://forge.example.com";
      tokenFile = "/run/secrets/forgejo-runner-token";
      labels = [ "nixos:host" ];
    };
  };

  # Each run tests a fresh clone, in the sweep's state directory. (The
  # command line is systemd's ExecStart= syntax: no `$` or `%` unescaped.)
  waymark.sweeps = {
    nightly = {
      command = "bash -euc 'rm -rf src && git clone --depth 1 https://forge.example.com/acme/app src && cd src && ci/run-tests --suite full'";
      schedule = "*-*-* 02:00:00";
      randomizedDelaySec = "30min";
    };
    weekly = {
      command = "bash -euc 'rm -rf src && git clone https://forge.example.com/acme/app src && cd src && git lfs pull && ci/run-tests --suite slow'";
      schedule = "Sun 03:00:00";
      randomizedDelaySec = "1h";
      timeout = "12h";
      # Same user as the runner's jobs: same permissions as well as the same
      # commands.
      user = "gitea-runner";
    };
  };

  waymark.knownGood.enable = true;

  waymark.deploy = {
    enable = true;
    targetHost = "ci.example.com";
    buildHost = "builder";
    tags = [ "ci" ];
    dependsOn = [ "builder" ];
    healthChecks = [
      {
        name = "runner";
        command = "systemctl is-active --quiet gitea-runner-forgejo.service";
      }
    ];
  };

  system.stateVersion = "26.05";
}
