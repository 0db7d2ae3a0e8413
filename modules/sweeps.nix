# waymark.sweeps.<name>: scheduled test runs (nightly, weekly) on a CI host.
#
# Each sweep is a oneshot service started by a timer. The service starts
# through `harness-run`, the entrypoint the runners use, and its environment
# is `waymark.harness.exports` with PATH forced, so a sweep sees exactly the
# commands a runner job sees: the timer cannot miss a tool the runner has.
# Output goes to the journal (`journalctl -u waymark-sweep-<name>`); a failed
# run starts `waymark-sweep-failed@<unit>.service`, which logs the failure at
# error priority with the run's last lines, plus any units listed in
# `onFailure`.
{
  config,
  lib,
  ...
}:
let
  cfg = config.waymark.sweeps;
  harness = config.waymark.harness;
  enabled = lib.filterAttrs (_: s: s.enable) cfg;

  defaultUser = "waymark-sweep";
  gcRootsBase = "/nix/var/nix/gcroots/waymark-sweeps";
  stateBase = "waymark-sweeps";
  failureUnit = "waymark-sweep-failed";

  userOf = s: if s.user == null then defaultUser else s.user;
  groupOf = s: config.users.users.${userOf s}.group or (userOf s);
  usesDefaultUser = lib.any (s: s.user == null) (lib.attrValues enabled);

  unitEnvironment = lib.mapAttrs (
    name: value: if name == "PATH" then lib.mkForce value else value
  ) harness.exports;

  hardening = import ./hardening.nix;
  gcRootsDirs = import ./gc-roots-dirs.nix { inherit lib; };

  sweepModule =
    { name, ... }:
    {
      options = {
        enable = lib.mkEnableOption "this sweep" // {
          default = true;
        };

        command = lib.mkOption {
          type = lib.types.nonEmptyStr;
          example = "make -C /var/lib/ci/checkout test-nightly";
          description = ''
            The command line (systemd `ExecStart=` syntax) that `harness-run`
            runs, from the sweep's state directory
            {file}`/var/lib/waymark-sweeps/<name>`.
          '';
        };

        schedule = lib.mkOption {
          type = lib.types.either lib.types.nonEmptyStr (lib.types.nonEmptyListOf lib.types.nonEmptyStr);
          example = "Sun 03:00";
          description = ''
            When to run, as {manpage}`systemd.time(7)` calendar events (the
            timer's `OnCalendar=`).
          '';
        };

        randomizedDelaySec = lib.mkOption {
          type = lib.types.str;
          default = "0";
          example = "45min";
          description = ''
            A random delay, up to this time span, added to each run
            (`RandomizedDelaySec=`), so sweeps of many hosts do not start at
            once.
          '';
        };

        persistent = lib.mkOption {
          type = lib.types.bool;
          default = true;
          description = ''
            Whether a run missed while the host was off starts when it comes
            back (`Persistent=`).
          '';
        };

        timeout = lib.mkOption {
          type = lib.types.str;
          default = "6h";
          example = "infinity";
          description = "How long a run may take before systemd stops it (`TimeoutStartSec=`).";
        };

        user = lib.mkOption {
          type = lib.types.nullOr lib.types.str;
          default = null;
          example = "gitea-runner";
          description = ''
            The user the sweep runs as. `null` means `${defaultUser}`, a
            system user Waymark creates. Any other name must be declared in
            {option}`users.users`, e.g. a runner's user, so the sweep also runs
            with the runner's permissions.
          '';
        };

        onFailure = lib.mkOption {
          type = lib.types.listOf lib.types.str;
          default = [ ];
          example = [ "notify-admins@%n.service" ];
          description = ''
            Units started when a run fails, in addition to
            `${failureUnit}@%n.service`, which logs the failure to the journal
            at error priority.
          '';
        };

        unit = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
          default = "waymark-sweep-${name}";
          defaultText = lib.literalExpression ''"waymark-sweep-''${name}"'';
          description = "The sweep's service and timer name (without suffix).";
        };

        gcRootsDir = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
          default = "${gcRootsBase}/${name}";
          defaultText = lib.literalExpression ''"${gcRootsBase}/''${name}"'';
          description = "A GC-roots directory the sweep may write, for results it must keep.";
        };
      };
    };

  sweepAssertions =
    name: s:
    let
      at = "waymark.sweeps.${name}";
    in
    [
      {
        assertion = harness.enable;
        message = "${at} runs through harness-run: set waymark.harness.enable = true and list the sweep's dependencies in waymark.harness.packages.";
      }
      {
        assertion = s.user == null || config.users.users ? ${s.user};
        message = "${at}.user: \"${toString s.user}\" is not declared in users.users; use null for the ${defaultUser} user.";
      }
    ];

  sweepService = name: s: {
    description = "Waymark sweep ${name}";
    wants = [ "network-online.target" ];
    after = [ "network-online.target" ];
    startAt = s.schedule;
    # HOME is the unit's, not the harness's: a writable directory whatever
    # the user (a runner's user may have /var/empty).
    environment = unitEnvironment // {
      HOME = "/var/lib/${stateBase}/${name}";
    };
    onFailure = [ "${failureUnit}@%n.service" ] ++ s.onFailure;
    # A switch must neither start a sweep nor wait for a running one, and
    # must not stop a run in progress when the sweep is removed (as
    # nixos-upgrade and nix-gc do).
    restartIfChanged = false;
    unitConfig.X-StopOnRemoval = false;
    serviceConfig = hardening // {
      Type = "oneshot";
      User = userOf s;
      Group = groupOf s;
      ExecStart = "${harness.entrypoint}/bin/harness-run ${s.command}";
      StateDirectory = "${stateBase}/${name}";
      WorkingDirectory = "/var/lib/${stateBase}/${name}";
      ReadWritePaths = [ s.gcRootsDir ];
      SyslogIdentifier = s.unit;
      TimeoutStartSec = s.timeout;
    };
  };
in
{
  # The options this module reads; importing a file twice is harmless.
  imports = [ ./harness.nix ];

  options.waymark.sweeps = lib.mkOption {
    type = lib.types.attrsOf (lib.types.submodule sweepModule);
    default = { };
    example = lib.literalExpression ''
      {
        nightly = {
          command = "ci/run-tests --suite full";
          schedule = "*-*-* 02:00";
          randomizedDelaySec = "30min";
        };
        weekly = {
          command = "ci/run-tests --suite slow";
          schedule = "Sun 03:00";
        };
      }
    '';
    description = ''
      Scheduled test runs with the harness env ({option}`waymark.harness`),
      started through `harness-run` like the runners' jobs.
    '';
  };

  config = lib.mkIf (enabled != { }) {
    assertions = lib.concatLists (lib.mapAttrsToList sweepAssertions enabled);

    users.users = lib.mkIf usesDefaultUser {
      ${defaultUser} = {
        isSystemUser = true;
        group = defaultUser;
        home = "/var/lib/${stateBase}";
        description = "Waymark sweeps";
      };
    };
    users.groups = lib.mkIf usesDefaultUser { ${defaultUser} = { }; };

    nix.settings.extra-allowed-users = lib.unique (lib.mapAttrsToList (_: userOf) enabled);

    systemd.tmpfiles.settings."10-waymark-sweeps" = gcRootsDirs gcRootsBase (
      lib.mapAttrsToList (_: s: {
        dir = s.gcRootsDir;
        user = userOf s;
        group = groupOf s;
      }) enabled
    );

    systemd.services =
      lib.mapAttrs' (name: s: lib.nameValuePair s.unit (sweepService name s)) enabled
      // {
        # `%i` is the failed unit. Lines prefixed with <3> reach the journal at
        # error priority, so `journalctl -p err` lists failed sweeps. journalctl
        # comes from the unit's default PATH (systemd), not from the harness:
        # reporting is not part of what the tests run with.
        "${failureUnit}@" = {
          description = "Report the failure of Waymark sweep %i";
          scriptArgs = "%i";
          script = ''
            unit="$1"
            echo "<3>Waymark sweep $unit failed; its last lines follow."
            journalctl --unit "$unit" --lines 40 --no-pager --output cat | sed 's/^/<3>  /'
          '';
          serviceConfig = {
            Type = "oneshot";
            DynamicUser = true;
            SupplementaryGroups = [ "systemd-journal" ];
            SyslogIdentifier = failureUnit;
          };
        };
      };

    systemd.timers = lib.mapAttrs' (
      _: s:
      lib.nameValuePair s.unit {
        timerConfig = {
          RandomizedDelaySec = s.randomizedDelaySec;
          Persistent = s.persistent;
        };
      }
    ) enabled;
  };
}
