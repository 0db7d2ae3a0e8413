# waymark.knownGood: the directories `waymark known-good` uses on a host.
#
# `waymark known-good` keeps a closure that passed every gate alive with GC
# roots under `rootsDir` (`<rootsDir>/<target>/<mark>` and `<mark>.drv`) and
# records it under `stateDir` (`<stateDir>/known-good/<target>/<mark>.json`).
# The roots directory must lie inside the store's gcroots directory, or the
# links are not roots at all. This module creates both directories, owned by
# the user that runs waymark (the deploy user when there is one), and points
# WAYMARK_STATE_DIR and WAYMARK_ROOTS_DIR at them for login shells.
{
  config,
  lib,
  ...
}:
let
  cfg = config.waymark.knownGood;
  deploy = config.waymark.deploy;

  gcRootsDir = "/nix/var/nix/gcroots";
  userGcRoots = "${gcRootsDir}/per-user/${cfg.user}";
  ownerGroup = config.users.users.${cfg.user}.group or "root";
in
{
  # The options this module reads; importing a file twice is harmless.
  imports = [ ./deploy.nix ];

  options.waymark.knownGood = {
    enable = lib.mkEnableOption "the state and GC-roots directories of `waymark known-good`";

    stateDir = lib.mkOption {
      type = lib.types.strMatching "/.*[^/]";
      default = "/var/lib/waymark";
      description = ''
        Where `waymark known-good` keeps its records
        (`known-good/<target>/<mark>.json`). Exported as WAYMARK_STATE_DIR.
      '';
    };

    rootsDir = lib.mkOption {
      type = lib.types.strMatching "/.*[^/]";
      default = "${gcRootsDir}/waymark";
      description = ''
        Where `waymark known-good` links its GC roots. Must be inside
        {file}`${gcRootsDir}`. Exported as WAYMARK_ROOTS_DIR.
      '';
    };

    user = lib.mkOption {
      type = lib.types.str;
      default = if deploy.enable && deploy.sshUser != "root" then deploy.sshUser else "root";
      defaultText = lib.literalExpression ''
        if config.waymark.deploy.enable && config.waymark.deploy.sshUser != "root"
        then config.waymark.deploy.sshUser else "root"
      '';
      description = ''
        The user that runs `waymark known-good` on this host and owns both
        directories. A user other than root also gets its own
        {file}`${gcRootsDir}/per-user/<user>` directory.
      '';
    };

    package = lib.mkOption {
      type = lib.types.nullOr lib.types.package;
      default = null;
      example = lib.literalExpression "inputs.waymark.packages.\${pkgs.stdenv.hostPlatform.system}.waymark";
      description = ''
        The `waymark` CLI to install on the host, for running
        `waymark known-good` there. `null` installs nothing: the deployer runs
        it from its own machine.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = lib.hasPrefix "${gcRootsDir}/" cfg.rootsDir;
        message = "waymark.knownGood.rootsDir (${cfg.rootsDir}) must be inside ${gcRootsDir}: links anywhere else are not GC roots, and the store would delete the known-good closures.";
      }
      {
        assertion = !(lib.hasPrefix "/nix/" cfg.stateDir);
        message = "waymark.knownGood.stateDir (${cfg.stateDir}) must not be under /nix.";
      }
      {
        assertion = cfg.user == "root" || config.users.users ? ${cfg.user};
        message = "waymark.knownGood.user: \"${cfg.user}\" is not declared in users.users.";
      }
    ];

    systemd.tmpfiles.settings."10-waymark-known-good" = {
      ${cfg.stateDir}.d = {
        mode = "0755";
        inherit (cfg) user;
        group = ownerGroup;
      };
      "${cfg.stateDir}/known-good".d = {
        mode = "0755";
        inherit (cfg) user;
        group = ownerGroup;
      };
      ${cfg.rootsDir}.d = {
        mode = "0755";
        inherit (cfg) user;
        group = ownerGroup;
      };
    }
    // lib.optionalAttrs (cfg.user != "root") {
      ${userGcRoots}.d = {
        mode = "0755";
        inherit (cfg) user;
        group = "root";
      };
    };

    environment.variables = {
      WAYMARK_STATE_DIR = cfg.stateDir;
      WAYMARK_ROOTS_DIR = cfg.rootsDir;
    };

    # waymark-lint: not a harness dependency list (the waymark CLI itself)
    environment.systemPackages = lib.optional (cfg.package != null) cfg.package;
  };
}
