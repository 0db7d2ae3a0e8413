# waymark.runners.<name>: CI runner services that run jobs with the harness
# env of ./harness.nix.
#
# Where NixOS already has a runner module, the env is plugged into it instead
# of writing a new runner: `gitea-actions` (Gitea and Forgejo Actions, through
# services.gitea-actions-runner) and `woodpecker` (services.woodpecker-agents,
# local backend). NixOS has no Drone runner module, so `drone-exec` is a unit
# of our own around drone-runner-exec, and `command` runs any command as a
# service. Whatever the kind, the unit's environment is exactly
# `waymark.harness.exports` (PATH forced to the env's, not extended by the
# upstream `path` or systemd's default one), the units Waymark writes start
# through `harness-run`, the entrypoint the sweeps use, and every unit gets
# the same test-runner sandbox. What each kind needs of the env and of its
# unit, and why, is in ./runner-kinds.nix; what its jobs can see, in
# docs/modules.md.
{
  config,
  lib,
  pkgs,
  utils,
  ...
}:
let
  cfg = config.waymark.runners;
  harness = config.waymark.harness;
  enabled = lib.filterAttrs (_: r: r.enable) cfg;
  ofKind = kind: lib.filterAttrs (_: r: r.kind == kind) enabled;
  validUsers = lib.filterAttrs (_: r: lib.stringLength r.user < 32) enabled;
  ownUnits = lib.filterAttrs (_: r: r.kind == "drone-exec" || r.kind == "command") enabled;

  gcRootsBase = "/nix/var/nix/gcroots/waymark-runners";
  stateBase = "waymark-runners";

  # The unit's environment: the harness exports. PATH is forced because the
  # upstream modules compute their own from `path` (with coreutils, findutils,
  # grep, sed and systemd appended): a tool found there and not in the env is
  # exactly the drift the harness exists to prevent.
  unitEnvironment = lib.mapAttrs (
    name: value: if name == "PATH" then lib.mkForce value else value
  ) harness.exports;

  # drone-runner-exec reads map settings as `k:v,k:v` (envconfig): a value with
  # a comma or a colon cannot be expressed.
  droneMap = attrs: lib.concatStringsSep "," (lib.mapAttrsToList (k: v: "${k}:${v}") attrs);
  droneUnsafe = lib.filterAttrs (
    _: v: lib.hasInfix "," v || lib.hasInfix ":" v
  ) harness.environment;

  kinds = import ./runner-kinds.nix { inherit lib; };

  # Secrets are read by systemd at start: an absolute path, never a store
  # path (the store is world-readable, and a Nix path literal would be copied
  # there).
  secretPath =
    lib.types.addCheck (lib.types.strMatching "/.+") (s: !lib.hasPrefix "${builtins.storeDir}/" s)
    // {
      description = "absolute path outside the Nix store";
    };

  hasKvm = r: lib.elem "kvm" r.extraGroups;
  # The unit's sandbox: the same for every kind (see ./runner-kinds.nix),
  # with /dev/kvm let through when the runner is in the kvm group.
  sandboxOf = r: kinds.sandbox // lib.optionalAttrs (hasKvm r) kinds.kvmDevice;

  runnerModule =
    { name, config, ... }:
    {
      options = {
        enable = lib.mkEnableOption "this runner" // {
          default = true;
        };

        kind = lib.mkOption {
          type = lib.types.enum [
            "gitea-actions"
            "woodpecker"
            "drone-exec"
            "command"
          ];
          example = "gitea-actions";
          description = ''
            Which runner to run:

            - `gitea-actions`: an instance of
              {option}`services.gitea-actions-runner.instances` (Gitea, or
              Forgejo with `services.gitea-actions-runner.package =
              pkgs.forgejo-runner`), with the harness env as its
              `hostPackages`. Jobs need a label ending in `:host`.
            - `woodpecker`: an agent of {option}`services.woodpecker-agents.agents`
              with the local backend and the harness env as its `path`.
            - `drone-exec`: drone-runner-exec (NixOS has no module for it),
              started through `harness-run`. The package is unfree (Polyform
              Small Business): allow it with
              {option}`nixpkgs.config.allowUnfreePredicate`.
            - `command`: {option}`waymark.runners.<name>.command`, started
              through `harness-run`, for any other runner or poller.
          '';
        };

        user = lib.mkOption {
          type = lib.types.strMatching "[a-z_][a-z0-9_-]*";
          default = if config.kind == "gitea-actions" then "gitea-runner" else "waymark-runner-${name}";
          defaultText = lib.literalExpression ''
            if kind == "gitea-actions" then "gitea-runner" else "waymark-runner-''${name}"
          '';
          description = ''
            The dedicated system user the runner runs as; Waymark creates it.
            It owns the runner's GC-roots directory and is allowed to use the
            Nix daemon. Must be `gitea-runner` for the `gitea-actions` kind,
            whose upstream unit names that user.
          '';
        };

        extraGroups = lib.mkOption {
          type = lib.types.listOf lib.types.str;
          default = [ ];
          example = [ "kvm" ];
          description = ''
            Supplementary groups of the runner's unit. `kvm` also lets
            {file}`/dev/kvm` through the sandbox (`PrivateDevices=false`,
            `DeviceAllow=/dev/kvm rw`, every other device closed); other
            device groups (${lib.concatStringsSep ", " kinds.hiddenDeviceGroups})
            are refused, since the sandbox hides their devices.
          '';
        };

        oomPolicy = lib.mkOption {
          type = lib.types.enum [
            "continue"
            "stop"
            "kill"
          ];
          # A job that runs out of memory has one process killed by the
          # kernel. systemd's default for services (stop) would then stop the
          # whole runner and cancel every other job on it; with continue the
          # runner reports that job as failed and keeps serving.
          default = "continue";
          description = "The unit's `OOMPolicy=`. See {manpage}`systemd.service(5)`.";
        };

        gcRootsDir = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
          default = "${gcRootsBase}/${name}";
          defaultText = lib.literalExpression ''"${gcRootsBase}/''${name}"'';
          description = ''
            A directory inside the store's GC roots, owned by the runner's user
            and writable from its sandbox: `nix-build --out-link` or
            `nix-store --add-root` there keeps a build's result alive.
          '';
        };

        unit = lib.mkOption {
          type = lib.types.str;
          readOnly = true;
          default =
            {
              gitea-actions = "gitea-runner-${utils.escapeSystemdPath name}";
              woodpecker = "woodpecker-agent-${name}";
              drone-exec = "waymark-runner-${name}";
              command = "waymark-runner-${name}";
            }
            .${config.kind};
          defaultText = lib.literalExpression "the service name the kind's module uses";
          description = "The systemd service (without `.service`) that runs this runner.";
        };

        command = lib.mkOption {
          type = lib.types.nullOr lib.types.nonEmptyStr;
          default = null;
          example = "buildkite-agent start";
          description = ''
            For the `command` kind: the command line (systemd `ExecStart=`
            syntax) that `harness-run` starts, from the runner's state
            directory.
          '';
        };

        restart = lib.mkOption {
          type = lib.types.enum [
            "always"
            "on-failure"
            "no"
          ];
          default = "always";
          description = "For the `command` and `drone-exec` kinds: the unit's `Restart=`.";
        };

        giteaActions = {
          url = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = null;
            example = "https://forge.example.com";
            description = "For the `gitea-actions` kind: the Gitea or Forgejo instance.";
          };

          tokenFile = lib.mkOption {
            type = lib.types.nullOr secretPath;
            default = null;
            example = "/run/secrets/forgejo-runner-token";
            description = ''
              For the `gitea-actions` kind: a file outside the store holding
              `TOKEN=<registration token>`. Older upstream modules read it as
              an environment file; newer ones take the raw token and still
              accept this form (with a deprecation warning in the journal).
            '';
          };

          labels = lib.mkOption {
            type = lib.types.listOf lib.types.str;
            default = [ "native:host" ];
            example = [
              "native:host"
              "nixos:host"
            ];
            description = ''
              For the `gitea-actions` kind: the runner's labels. At least one
              must end in `:host`: only host jobs run with the harness env.
            '';
          };

          name = lib.mkOption {
            type = lib.types.str;
            default = "${hostName}-${name}";
            defaultText = lib.literalExpression ''"''${config.networking.hostName}-''${name}"'';
            description = "For the `gitea-actions` kind: the name the forge shows.";
          };
        };

        woodpecker = {
          server = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = null;
            example = "ci.example.com:9000";
            description = "For the `woodpecker` kind: the server's gRPC address (`WOODPECKER_SERVER`).";
          };

          environmentFile = lib.mkOption {
            type = lib.types.listOf secretPath;
            default = [ ];
            example = [ "/run/secrets/woodpecker-agent.env" ];
            description = ''
              For the `woodpecker` kind: environment files, outside the store,
              e.g. with `WOODPECKER_AGENT_SECRET=…`.
            '';
          };
        };

        drone = {
          package = lib.mkPackageOption pkgs "drone-runner-exec" { };

          rpcHost = lib.mkOption {
            type = lib.types.nullOr lib.types.str;
            default = null;
            example = "drone.example.com";
            description = "For the `drone-exec` kind: the Drone server (`DRONE_RPC_HOST`).";
          };

          rpcProto = lib.mkOption {
            type = lib.types.enum [
              "http"
              "https"
            ];
            default = "https";
            description = "For the `drone-exec` kind: `DRONE_RPC_PROTO`.";
          };

          secretFile = lib.mkOption {
            type = lib.types.nullOr secretPath;
            default = null;
            example = "/run/secrets/drone-runner.env";
            description = ''
              For the `drone-exec` kind: an environment file, outside the
              store, holding `DRONE_RPC_SECRET=…`.
            '';
          };

          capacity = lib.mkOption {
            type = lib.types.ints.positive;
            default = 2;
            description = "For the `drone-exec` kind: jobs run at once (`DRONE_RUNNER_CAPACITY`).";
          };

          labels = lib.mkOption {
            type = lib.types.attrsOf (lib.types.strMatching "[^,:]*");
            default = { };
            example = {
              harness = "waymark";
            };
            description = "For the `drone-exec` kind: `DRONE_RUNNER_LABELS`.";
          };
        };
      };
    };

  hostName = config.networking.hostName;

  gcRootsDirs = import ./gc-roots-dirs.nix { inherit lib; };

  runnerAssertions =
    name: r:
    let
      at = "waymark.runners.${name}";
      upstreamInstance = config.services.gitea-actions-runner.instances.${name};
      upstreamAgent = config.services.woodpecker-agents.agents.${name};
      onlyTheEnv = pkgList: map toString pkgList == [ "${harness.env}" ];
    in
    [
      {
        assertion = harness.enable;
        message = "${at} runs jobs with the harness env: set waymark.harness.enable = true and list the jobs' dependencies in waymark.harness.packages.";
      }
      {
        assertion = lib.stringLength r.user < 32;
        message = "${at}.user: \"${r.user}\" is longer than 31 characters; set a shorter ${at}.user.";
      }
      {
        assertion = lib.intersectLists kinds.hiddenDeviceGroups r.extraGroups == [ ];
        message = "${at}.extraGroups: ${lib.concatStringsSep ", " (lib.intersectLists kinds.hiddenDeviceGroups r.extraGroups)} would do nothing: the runner's sandbox (PrivateDevices) hides those devices. Only kvm is let through.";
      }
      {
        assertion = (r.command != null) == (r.kind == "command");
        message =
          if r.kind == "command" then
            "${at}: the command kind needs ${at}.command."
          else
            "${at}.command is only used by the command kind, not by ${r.kind}.";
      }
    ]
    ++ lib.optionals (r.kind == "gitea-actions") [
      {
        assertion = r.user == "gitea-runner";
        message = "${at}.user must be \"gitea-runner\" for the gitea-actions kind: the upstream unit hard-codes User=gitea-runner and shares its state directory between instances.";
      }
      {
        assertion = r.giteaActions.url != null && r.giteaActions.tokenFile != null;
        message = "${at}: the gitea-actions kind needs giteaActions.url and giteaActions.tokenFile.";
      }
      {
        assertion = lib.any (lib.hasSuffix ":host") r.giteaActions.labels;
        message = "${at}.giteaActions.labels: no label ends in \":host\", so no job would run with the harness env (upstream puts hostPackages on PATH only for host labels).";
      }
      {
        assertion = onlyTheEnv upstreamInstance.hostPackages;
        message = "services.gitea-actions-runner.instances.${name}.hostPackages must be the harness env alone; add packages to waymark.harness.packages instead.";
      }
    ]
    ++ lib.optionals (r.kind == "woodpecker") [
      {
        assertion = r.woodpecker.server != null;
        message = "${at}: the woodpecker kind needs woodpecker.server.";
      }
      {
        assertion = onlyTheEnv upstreamAgent.path;
        message = "services.woodpecker-agents.agents.${name}.path must be the harness env alone; add packages to waymark.harness.packages instead.";
      }
    ]
    ++ lib.optionals (r.kind == "drone-exec") [
      {
        assertion = r.drone.rpcHost != null && r.drone.secretFile != null;
        message = "${at}: the drone-exec kind needs drone.rpcHost and drone.secretFile.";
      }
      {
        assertion = droneUnsafe == { };
        message = "${at}: drone-runner-exec passes only PATH and USER to steps, so Waymark hands it the harness variables as DRONE_RUNNER_ENVIRON (k:v,k:v), which cannot carry a comma or a colon; waymark.harness.environment has one in: ${lib.concatStringsSep ", " (lib.attrNames droneUnsafe)}.";
      }
    ];

  ownUnit =
    name: r:
    let
      droneEnvironment = {
        DRONE_RPC_PROTO = r.drone.rpcProto;
        DRONE_RPC_HOST = toString r.drone.rpcHost;
        DRONE_RUNNER_CAPACITY = toString r.drone.capacity;
        DRONE_RUNNER_NAME = "${hostName}-${name}";
        # The runner's dashboard listens on :3000 with admin/admin unless told
        # otherwise.
        DRONE_UI_DISABLE = "true";
      }
      // lib.optionalAttrs (r.drone.labels != { }) { DRONE_RUNNER_LABELS = droneMap r.drone.labels; }
      // lib.optionalAttrs (harness.environment != { }) {
        DRONE_RUNNER_ENVIRON = droneMap harness.environment;
      };
      command =
        if r.kind == "drone-exec" then "${lib.getExe' r.drone.package "drone-runner-exec"} daemon" else r.command;
    in
    {
      description = "Waymark runner ${name} (${r.kind})";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      environment = lib.optionalAttrs (r.kind == "drone-exec") droneEnvironment;
      serviceConfig = sandboxOf r // {
        User = r.user;
        Group = r.user;
        ExecStart = "${harness.entrypoint}/bin/harness-run ${command}";
        StateDirectory = "${stateBase}/${name}";
        WorkingDirectory = "/var/lib/${stateBase}/${name}";
        Restart = r.restart;
        RestartSec = 5;
      }
      // lib.optionalAttrs (r.kind == "drone-exec") { EnvironmentFile = toString r.drone.secretFile; };
    };
in
{
  # The options this module reads; importing a file twice is harmless.
  imports = [ ./harness.nix ];

  options.waymark.runners = lib.mkOption {
    type = lib.types.attrsOf (lib.types.submodule runnerModule);
    default = { };
    example = lib.literalExpression ''
      {
        forgejo = {
          kind = "gitea-actions";
          giteaActions = {
            url = "https://forge.example.com";
            tokenFile = "/run/secrets/forgejo-runner-token";
          };
        };
        poller = {
          kind = "command";
          command = "./ci/poll-and-test";
        };
      }
    '';
    description = ''
      CI runners that run jobs with the harness env
      ({option}`waymark.harness`). Each has a dedicated user, a sandboxed
      unit and a GC-roots directory for its builds.
    '';
  };

  config = lib.mkIf (enabled != { }) (
    lib.mkMerge [
      {
        assertions = lib.concatLists (lib.mapAttrsToList runnerAssertions enabled);

        waymark.harness.requiredCommands = lib.concatMapAttrs (
          name: r:
          lib.mapAttrs' (why: lib.nameValuePair "waymark.runners.${name} (${why})") (
            kinds.requires {
              inherit (r) kind;
              giteaPackage = config.services.gitea-actions-runner.package or null;
            }
          )
        ) enabled;

        # A name NixOS would reject with an abort is left out, so that the
        # assertion above, which names the option to change, is what shows.
        users.users = lib.mapAttrs' (
          name: r:
          lib.nameValuePair r.user (
            {
              isSystemUser = true;
              group = r.user;
              description = "Waymark CI runner";
            }
            # gitea-runner's home stays upstream's (/var/empty, HOME set per
            # instance by its unit); the other kinds get their state directory.
            // lib.optionalAttrs (r.kind != "gitea-actions") { home = "/var/lib/${stateBase}/${name}"; }
          )
        ) validUsers;
        users.groups = lib.mapAttrs' (_: r: lib.nameValuePair r.user { }) validUsers;

        # Only root and these users may then create GC roots through the daemon
        # when `allowed-users` is narrowed; `extra-` keeps NixOS's default.
        nix.settings.extra-allowed-users = lib.unique (lib.mapAttrsToList (_: r: r.user) enabled);

        systemd.tmpfiles.settings."10-waymark-runners" = gcRootsDirs gcRootsBase (
          lib.mapAttrsToList (_: r: {
            dir = r.gcRootsDir;
            inherit (r) user;
            group = r.user;
          }) enabled
        );

        systemd.services = lib.mapAttrs' (
          name: r:
          lib.nameValuePair r.unit {
            environment = unitEnvironment;
            serviceConfig = {
              # The upstream units run with DynamicUser (which implies
              # ProtectSystem=strict); ours with ProtectSystem=strict.
              ReadWritePaths = [ r.gcRootsDir ];
              OOMPolicy = r.oomPolicy;
              SupplementaryGroups = r.extraGroups;
            }
            # The units upstream writes get the same sandbox, above upstream's
            # own settings (woodpecker's turns on what test jobs need off).
            # Waymark's own units have it in their definition below.
            // lib.optionalAttrs (!(ownUnits ? ${name})) (lib.mapAttrs (_: lib.mkOverride 90) (sandboxOf r));
          }
        ) enabled;
      }

      (lib.mkIf (ofKind "gitea-actions" != { }) {
        services.gitea-actions-runner.instances = lib.mapAttrs (_: r: {
          enable = true;
          inherit (r.giteaActions)
            name
            url
            tokenFile
            labels
            ;
          hostPackages = [ harness.env ];
        }) (ofKind "gitea-actions");
      })

      (lib.mkIf (ofKind "woodpecker" != { }) {
        services.woodpecker-agents.agents = lib.mapAttrs (_: r: {
          enable = true;
          environment = {
            WOODPECKER_SERVER = r.woodpecker.server;
            WOODPECKER_BACKEND = "local";
          };
          inherit (r.woodpecker) environmentFile;
          path = [ harness.env ];
        }) (ofKind "woodpecker");

        # Upstream runs the agent with DynamicUser and no User=; naming our
        # static user makes systemd use it, so it can own the GC-roots dir.
        systemd.services = lib.mapAttrs' (
          name: r:
          lib.nameValuePair r.unit {
            serviceConfig = {
              User = r.user;
              StateDirectory = "${stateBase}/${name}";
            };
          }
        ) (ofKind "woodpecker");
      })

      { systemd.services = lib.mapAttrs' (name: r: lib.nameValuePair r.unit (ownUnit name r)) ownUnits; }
    ]
  );
}
