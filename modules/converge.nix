# services.waymark-converge: the controller of `waymark converge` as a service.
#
# It keeps every host of a fleet on the commit of its `release/<host>` branch
# (or a pinned known-good mark, or holds it), watches the hosts over ssh (each
# host runs `waymark host-watch`: install the CLI there with
# waymark.knownGood.package, or it is polled with a shell script), and deploys
# through the gates. docs/converge.md says what it does and why.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.waymark-converge;

  # The controller's per-host settings, in the form `--config` reads.
  settings = {
    drift = cfg.drift;
    hosts = lib.mapAttrs (
      _: h:
      lib.filterAttrs (_: v: v != null) {
        inherit (h) drift;
        desired =
          if h.hold then
            "hold"
          else if h.pin != null then
            { mark = h.pin; }
          else
            "release";
      }
    ) cfg.hosts;
  };
  configFile = builtins.toFile "waymark-converge.json" (builtins.toJSON cfg.finalSettings);

  hostModule = {
    options = {
      drift = lib.mkOption {
        type = lib.types.nullOr (
          lib.types.enum [
            "report"
            "restore"
          ]
        );
        default = null;
        description = ''
          What to do when this host drifts; `null` takes
          {option}`services.waymark-converge.drift`.
        '';
      };
      hold = lib.mkOption {
        type = lib.types.bool;
        default = false;
        description = "Leave this host alone: no deploy, whatever its release branch says.";
      };
      pin = lib.mkOption {
        type = lib.types.nullOr (lib.types.strMatching "[0-9]{8}T[0-9]{6}Z-[0-9a-f]{7,40}");
        default = null;
        example = "20261123T172900Z-1a2b3c4";
        description = ''
          Keep this host on this known-good mark (`waymark known-good list
          <host>`) instead of its release branch.
        '';
      };
    };
  };

  args = [
    "converge"
    "--flake"
    cfg.flake
    "--config"
    configFile
    "--state-dir"
    cfg.stateDir
    "--remote-waymark"
    cfg.remoteCommand
  ]
  ++ lib.optionals (cfg.metricsAddress != null) [
    "--metrics"
    cfg.metricsAddress
  ]
  ++ cfg.extraArgs;
in
{
  options.services.waymark-converge = {
    enable = lib.mkEnableOption "the Waymark convergence controller (`waymark converge`)";

    package = lib.mkOption {
      type = lib.types.package;
      example = lib.literalExpression "inputs.waymark.packages.\${pkgs.stdenv.hostPlatform.system}.waymark";
      description = "The `waymark` CLI the controller runs.";
    };

    flake = lib.mkOption {
      type = lib.types.strMatching "/.*";
      example = "/var/lib/waymark/fleet";
      description = ''
        A local git checkout of the fleet's flake, holding the
        `release/<host>` branches. The controller reads it and never writes to
        it except for the release tags of hosts with `tagReleases`; keep it
        up to date (e.g. a timer running `git fetch`).
      '';
    };

    stateDir = lib.mkOption {
      type = lib.types.strMatching "/.*[^/]";
      default = "/var/lib/waymark";
      description = ''
        Where the controller keeps its state (`converge/state.json`) and the
        deploys their records.
      '';
    };

    drift = lib.mkOption {
      type = lib.types.enum [
        "report"
        "restore"
      ];
      default = "report";
      description = ''
        What to do when a host runs something else than its release: report
        it and leave the host as it is, or deploy the release again through
        the gates.
      '';
    };

    hosts = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule hostModule);
      default = { };
      example = lib.literalExpression ''
        {
          db.hold = true;
          web1.drift = "restore";
          web2.pin = "20261123T172900Z-1a2b3c4";
        }
      '';
      description = "Settings per host of the fleet; hosts not named follow the defaults.";
    };

    remoteCommand = lib.mkOption {
      type = lib.types.str;
      default = "waymark";
      description = ''
        The waymark command on the hosts (their watcher and marks), a shell
        command line run as is.
      '';
    };

    sshKeyFile = lib.mkOption {
      # A string, not a path: a path would be copied into the store.
      type = lib.types.nullOr (lib.types.strMatching "/.*");
      default = null;
      example = "/run/keys/waymark-deploy";
      description = ''
        The ssh key the controller logs in to the hosts with, passed to the
        service as a credential (`LoadCredential`): never copied to the store.
      '';
    };

    metricsAddress = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "127.0.0.1:9477";
      description = "Where to serve Prometheus metrics; `null` serves none.";
    };

    finalSettings = lib.mkOption {
      type = lib.types.attrsOf lib.types.anything;
      readOnly = true;
      default = settings;
      defaultText = lib.literalMD "from {option}`drift` and {option}`hosts`";
      description = ''
        The settings file given to `waymark converge --config`, as written
        (read-only; docs/converge.md, "Configuration").
      '';
    };

    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [
        "--max-attempts"
        "3"
        "--backoff-max"
        "10m"
      ];
      description = "More arguments of `waymark converge`.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = lib.flatten (
      lib.mapAttrsToList (name: h: {
        assertion = !(h.hold && h.pin != null);
        message = "services.waymark-converge.hosts.${name}: hold and pin exclude each other (hold leaves the host alone, pin keeps it on a mark).";
      }) cfg.hosts
    );

    systemd.services.waymark-converge = {
      description = "Waymark convergence controller";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # waymark-lint: not a harness dependency list (what the controller's deploys run)
      path = [
        pkgs.nix
        pkgs.git
        pkgs.openssh
      ];
      environment = {
        WAYMARK_STATE_DIR = cfg.stateDir;
      }
      // lib.optionalAttrs (cfg.sshKeyFile != null) {
        NIX_SSHOPTS = "-i %d/ssh-key";
      };
      # A switch of this machine must not cut the controller's deploys short;
      # its state survives a restart anyway (see docs/converge.md).
      restartIfChanged = false;
      serviceConfig = {
        ExecStart = "${lib.getExe' cfg.package "waymark"} ${lib.escapeShellArgs args}";
        Restart = "always";
        RestartSec = 5;
        # SIGTERM ends it with 143 (128 + 15), its documented way to stop.
        SuccessExitStatus = "143";
        LoadCredential = lib.optional (cfg.sshKeyFile != null) "ssh-key:${cfg.sshKeyFile}";
      };
    };
  };
}
