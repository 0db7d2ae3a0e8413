# The contract: the NixOS options that Waymark's modules touch, declared with
# the names, types, defaults and merge behaviour of NixOS 26.05, so the module
# tests can evaluate with nothing but nixpkgs' lib. Where a NixOS module turns
# options into other options in a way the tests depend on, that is modelled
# too (and nothing more).
#
# Provenance: ./contract-sources.nix names, for every option declared here,
# the nixpkgs file and revision it was copied from (test-contract-sources
# fails on an option without one). ./sync-contract.sh re-reads those
# declarations from a nixpkgs checkout and reports each difference; run it
# when flake.lock moves (test-upstream-pin fails until then).
#
# What is modelled besides the declarations:
#
# - systemd services: `path` becomes `environment.PATH` (systemd's default
#   path appended with mkAfter), `script` becomes `ExecStart`, `startAt` makes
#   a timer, `onFailure` becomes `OnFailure=`. Unit options merge like
#   `unitOption` (lists concatenate, other values must be equal).
#   Sources: nixos/lib/systemd-lib.nix, nixos/lib/systemd-unit-options.nix,
#   nixos/modules/system/boot/systemd.nix.
# - services.gitea-actions-runner (continuous-integration/gitea-actions-runner.nix
#   @359f8630b845): the unit it writes, with its registration script reduced
#   to the commands it runs, and its assertions.
# - services.woodpecker-agents (continuous-integration/woodpecker/agents.nix
#   @744611273ea2): the unit it writes, its sandbox copied whole.
# - users.users / users.groups (config/users-groups.nix @b69a0b599fef): the
#   assertions about system users.
#
# The same test files also run against the real `nixosSystem` in
# `nix flake check` (checks/default.nix), which is where a difference between
# this contract and NixOS would show.
{ config, lib, ... }:
let
  inherit (lib) mkOption types;

  pkgs = import ./stand-in-pkgs.nix { inherit lib; };

  # nixos/lib/utils.nix escapes these characters as \xNN and "/" as "-".
  utils.escapeSystemdPath =
    s:
    let
      trimmed = lib.removePrefix "/" (lib.removeSuffix "/" s);
      escaped = lib.strings.escapeC (lib.stringToCharacters " !\"#$%&'()*+,;<=>=@[\\]^`{|}~-") trimmed;
    in
    builtins.replaceStrings [ "/" ] [ "-" ] (
      if lib.hasPrefix "." escaped then "\\x2e" + lib.removePrefix "." escaped else escaped
    );

  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # Lists concatenate; any other value must be the same in every definition.
  unitOption = lib.mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.isList (lib.head defs').value then
        lib.concatMap (
          def:
          if lib.isList def.value then
            def.value
          else
            throw "The definitions of ${lib.showOption loc} mix lists and non-lists."
        ) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  serviceTypes = [
    "exec"
    "simple"
    "forking"
    "oneshot"
    "dbus"
    "notify"
    "notify-reload"
    "idle"
  ];
  restartValues = [
    "no"
    "on-success"
    "on-failure"
    "on-abnormal"
    "on-abort"
    "on-watchdog"
    "always"
  ];
  checkService =
    s:
    (s ? Type -> lib.elem s.Type serviceTypes) && (s ? Restart -> lib.elem s.Restart restartValues);

  unitList =
    description:
    mkOption {
      type = types.listOf unitNameType;
      default = [ ];
      inherit description;
    };

  commonUnitOptions = {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = "Whether the unit is enabled.";
    };
    description = mkOption {
      type = types.singleLineStr;
      default = "";
      description = "Description.";
    };
    wantedBy = unitList "WantedBy.";
    requiredBy = unitList "RequiredBy.";
    wants = unitList "Wants=.";
    requires = unitList "Requires=.";
    after = unitList "After=.";
    before = unitList "Before=.";
    bindsTo = unitList "BindsTo=.";
    partOf = unitList "PartOf=.";
    conflicts = unitList "Conflicts=.";
    onFailure = unitList "OnFailure=.";
    onSuccess = unitList "OnSuccess=.";
    unitConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
      description = "[Unit] section.";
    };
  };

  serviceModule =
    { name, config, ... }:
    {
      options = commonUnitOptions // {
        environment = mkOption {
          type = types.attrsOf (
            types.nullOr (
              types.oneOf [
                types.str
                types.path
                types.package
              ]
            )
          );
          default = { };
          description = "Environment=.";
        };
        path = mkOption {
          type = types.listOf (
            types.oneOf [
              types.package
              types.str
            ]
          );
          default = [ ];
          description = "Packages whose bin and sbin form PATH.";
        };
        serviceConfig = mkOption {
          type = types.addCheck (types.attrsOf unitOption) checkService;
          default = { };
          description = "[Service] section.";
        };
        script = mkOption {
          type = types.lines;
          default = "";
          description = "The main process as a shell script.";
        };
        scriptArgs = mkOption {
          type = types.str;
          default = "";
          description = "Arguments of the script.";
        };
        preStart = mkOption {
          type = types.lines;
          default = "";
          description = "ExecStartPre= as a shell script.";
        };
        startAt = mkOption {
          type = types.either types.str (types.listOf types.str);
          default = [ ];
          apply = v: if lib.isList v then v else [ v ];
          description = "OnCalendar= of a generated timer.";
        };
        restartIfChanged = mkOption {
          type = types.bool;
          default = true;
          description = "X-RestartIfChanged.";
        };
        reloadIfChanged = mkOption {
          type = types.bool;
          default = false;
          description = "X-ReloadIfChanged.";
        };
        stopIfChanged = mkOption {
          type = types.bool;
          default = true;
          description = "X-StopIfChanged.";
        };
        restartTriggers = mkOption {
          type = types.listOf types.unspecified;
          default = [ ];
          description = "Restart triggers.";
        };
      };

      config = lib.mkMerge [
        {
          # stage2ServiceConfig: systemd's default path, appended.
          path = lib.mkAfter [
            pkgs.coreutils
            pkgs.findutils
            pkgs.gnugrep
            pkgs.gnused
            pkgs.systemd
          ];
          environment.PATH = lib.mkIf (config.path != [ ]) "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
          unitConfig = lib.optionalAttrs (config.onFailure != [ ]) {
            OnFailure = toString config.onFailure;
          };
        }
        (lib.mkIf (config.script != "") {
          serviceConfig.ExecStart =
            "${pkgs.writeShellScriptBin "${name}-start" config.script}/bin/${name}-start"
            + " "
            + config.scriptArgs;
        })
        (lib.mkIf (config.preStart != "") {
          serviceConfig.ExecStartPre = [
            "${pkgs.writeShellScriptBin "${name}-pre-start" config.preStart}/bin/${name}-pre-start"
          ];
        })
      ];
    };

  timerModule = {
    options = commonUnitOptions // {
      timerConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
        description = "[Timer] section.";
      };
    };
  };

  tmpfilesEntry =
    { name, ... }:
    {
      options = {
        type = mkOption {
          type = types.str;
          default = name;
          description = "Type.";
        };
        mode = mkOption {
          type = types.str;
          default = "-";
          description = "Mode.";
        };
        user = mkOption {
          type = types.str;
          default = "-";
          description = "User.";
        };
        group = mkOption {
          type = types.str;
          default = "-";
          description = "Group.";
        };
        age = mkOption {
          type = types.str;
          default = "-";
          description = "Age.";
        };
        argument = mkOption {
          type = types.str;
          default = "";
          description = "Argument.";
        };
      };
    };

  userModule =
    { name, config, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
          # As in NixOS: an abort, which no assertion or tryEval can catch.
          apply = x: if lib.stringLength x < 32 then x else abort "Username '${x}' is longer than 31 characters which is not allowed!";
          description = "User name.";
        };
        description = mkOption {
          type = types.str;
          default = "";
          description = "GECOS.";
        };
        uid = mkOption {
          type = types.nullOr types.int;
          default = null;
          description = "UID.";
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
          description = "System user.";
        };
        isNormalUser = mkOption {
          type = types.bool;
          default = false;
          description = "Normal user.";
        };
        group = mkOption {
          type = types.str;
          default = "";
          description = "Primary group.";
        };
        extraGroups = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Auxiliary groups.";
        };
        home = mkOption {
          type = types.str;
          default = "/var/empty";
          description = "Home directory.";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
          description = "Create the home directory.";
        };
        openssh.authorizedKeys.keys = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "SSH keys.";
        };
      };
      config = lib.mkIf config.isNormalUser {
        group = lib.mkDefault "users";
        home = lib.mkDefault "/home/${config.name}";
        createHome = lib.mkDefault true;
      };
    };

  groupModule =
    { name, ... }:
    {
      options = {
        name = mkOption {
          type = types.str;
          default = name;
          description = "Group name.";
        };
        gid = mkOption {
          type = types.nullOr types.int;
          default = null;
          description = "GID.";
        };
        members = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Members.";
        };
      };
    };

  giteaInstance = {
    options = {
      enable = lib.mkEnableOption "Gitea Actions Runner instance";
      name = mkOption {
        type = types.str;
        description = "Runner name.";
      };
      url = mkOption {
        type = types.str;
        description = "Instance URL.";
      };
      token = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Token.";
      };
      tokenFile = mkOption {
        type = types.nullOr (types.either types.str types.path);
        default = null;
        description = "Environment file with TOKEN=.";
      };
      labels = mkOption {
        type = types.listOf types.str;
        description = "Labels.";
      };
      settings = mkOption {
        type = types.attrsOf types.anything;
        default = { };
        description = "act_runner settings (YAML upstream).";
      };
      hostPackages = mkOption {
        type = types.listOf types.package;
        default = with pkgs; [
          bash
          coreutils
          curl
          gawk
          gitMinimal
          gnused
          nodejs
          wget
        ];
        description = "Packages on PATH for host labels.";
      };
    };
  };

  woodpeckerAgent = {
    options = {
      enable = lib.mkEnableOption "this Woodpecker agent";
      package = lib.mkPackageOption pkgs "woodpecker-agent" { };
      environment = mkOption {
        type = types.attrsOf types.str;
        default = { };
        description = "Agent environment.";
      };
      extraGroups = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "SupplementaryGroups.";
      };
      path = mkOption {
        type = types.listOf types.package;
        default = [ ];
        description = "Packages on the agent's PATH.";
      };
      environmentFile = mkOption {
        type = types.listOf types.path;
        default = [ ];
        description = "EnvironmentFile=.";
      };
    };
  };

  # nix.nix: what a nix.conf value may be.
  atom = types.nullOr (
    types.oneOf [
      types.bool
      types.int
      types.float
      types.str
      types.path
      types.package
    ]
  );

  gitea = config.services.gitea-actions-runner;
  giteaHasDocker = i: i.labels == [ ] || lib.any (lib.hasInfix ":docker:") i.labels;
  giteaHasHost = i: lib.any (lib.hasSuffix ":host") i.labels;
  tokenXorTokenFile = i: (i.token == null) != (i.tokenFile == null);
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
      description = "Assertions.";
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "Warnings.";
    };

    networking.hostName = mkOption {
      type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
      default = "nixos";
      description = "Host name.";
    };

    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "System packages.";
    };
    environment.variables = mkOption {
      type = types.attrsOf (types.either types.str (types.listOf types.str));
      default = { };
      description = "Login shell variables.";
    };

    users.users = mkOption {
      type = types.attrsOf (types.submodule userModule);
      default = { };
      description = "Users.";
    };
    users.groups = mkOption {
      type = types.attrsOf (types.submodule groupModule);
      default = { };
      description = "Groups.";
    };

    nix.settings = mkOption {
      type = types.submodule {
        freeformType = types.attrsOf (types.either atom (types.listOf atom));
        options = {
          allowed-users = mkOption {
            type = types.listOf types.str;
            default = [ "*" ];
            description = "allowed-users.";
          };
          trusted-users = mkOption {
            type = types.listOf types.str;
            default = [ "root" ];
            description = "trusted-users.";
          };
        };
      };
      default = { };
      description = "nix.conf settings.";
    };

    systemd.enableStrictShellChecks = lib.mkEnableOption "strict shell checks of unit scripts";

    systemd.services = mkOption {
      type = types.attrsOf (types.submodule serviceModule);
      default = { };
      description = "Services.";
    };
    systemd.timers = mkOption {
      type = types.attrsOf (types.submodule timerModule);
      default = { };
      description = "Timers.";
    };
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "tmpfiles.d lines.";
    };
    systemd.tmpfiles.settings = mkOption {
      type = types.attrsOf (types.attrsOf (types.attrsOf (types.submodule tmpfilesEntry)));
      default = { };
      description = "tmpfiles.d entries by file, path and type.";
    };

    virtualisation.docker.enable = lib.mkEnableOption "docker";
    virtualisation.podman.enable = lib.mkEnableOption "podman";

    services.gitea-actions-runner = {
      package = lib.mkPackageOption pkgs "gitea-actions-runner" { };
      instances = mkOption {
        type = types.attrsOf (types.submodule giteaInstance);
        default = { };
        description = "Runner instances.";
      };
    };

    services.woodpecker-agents.agents = mkOption {
      type = types.attrsOf (types.submodule woodpeckerAgent);
      default = { };
      description = "Woodpecker agents.";
    };
  };

  config = lib.mkMerge [
    {
      _module.args = { inherit pkgs utils; };

      # systemd.nix: a timer for every enabled service with startAt.
      systemd.timers = lib.mapAttrs (_: service: {
        wantedBy = [ "timers.target" ];
        timerConfig.OnCalendar = service.startAt;
      }) (lib.filterAttrs (_: s: s.enable && s.startAt != [ ]) config.systemd.services);

      # users-groups.nix
      assertions = lib.concatLists (
        lib.mapAttrsToList (name: user: [
          {
            assertion = user.isSystemUser != user.isNormalUser;
            message = "Exactly one of users.users.${name}.isSystemUser and users.users.${name}.isNormalUser must be set.";
          }
          {
            assertion = user.group != "";
            message = "users.users.${name}.group is unset.";
          }
        ]) config.users.users
      );
    }

    (lib.mkIf (gitea.instances != { }) {
      assertions = [
        {
          assertion = lib.any tokenXorTokenFile (lib.attrValues gitea.instances);
          message = "Instances of gitea-actions-runner can have `token` or `tokenFile`, not both.";
        }
        {
          assertion =
            lib.any giteaHasDocker (lib.attrValues gitea.instances)
            -> config.virtualisation.docker.enable || config.virtualisation.podman.enable;
          message = "Label configuration on gitea-actions-runner instance requires either docker or podman.";
        }
      ];
      systemd.services = lib.mapAttrs' (
        name: instance:
        lib.nameValuePair "gitea-runner-${utils.escapeSystemdPath name}" {
          inherit (instance) enable;
          description = "Gitea Actions Runner";
          wants = [ "network-online.target" ];
          after = [ "network-online.target" ];
          wantedBy = [ "multi-user.target" ];
          environment = lib.optionalAttrs (instance.token != null) { TOKEN = instance.token; } // {
            HOME = "/var/lib/gitea-runner/${name}";
          };
          path = [ pkgs.coreutils ] ++ lib.optionals (giteaHasHost instance) instance.hostPackages;
          serviceConfig = {
            DynamicUser = true;
            User = "gitea-runner";
            StateDirectory = "gitea-runner";
            WorkingDirectory = "-/var/lib/gitea-runner/${name}";
            Restart = "on-failure";
            RestartSec = 2;
            # The registration script, reduced to what it runs by name and
            # how (written for the contract, not copied): test-upstream-pin
            # reads the commands from the text. Upstream's is a
            # writeShellScript, so bash itself is found by absolute path.
            ExecStartPre = [
              (pkgs.writeShellScript "gitea-register-runner-${name}" ''
                dir="$STATE_DIRECTORY/${name}"
                mkdir -vp "$dir"
                wanted="$(echo ${lib.escapeShellArg (lib.concatStringsSep "\n" instance.labels)} | sort)"
                current="$(cat "$dir/.labels" 2>/dev/null || echo 0)"
                if [ ! -e "$dir/.runner" ] || [ "$wanted" != "$current" ]; then
                  rm -v "$dir/.runner" || true
                  ${gitea.package}/bin/act_runner register --no-interactive --token "$TOKEN"
                  echo "$wanted" > "$dir/.labels"
                fi
              '')
            ];
            ExecStart = "${gitea.package}/bin/act_runner daemon --config /nix/store/stand-in-config.yaml";
            SupplementaryGroups = [ ];
          }
          // lib.optionalAttrs (instance.tokenFile != null) { EnvironmentFile = instance.tokenFile; };
        }
      ) gitea.instances;
    })

    {
      systemd.services = lib.mapAttrs' (
        name: agent:
        lib.nameValuePair "woodpecker-agent-${name}" {
          description = "Woodpecker-Agent Service - ${name}";
          wantedBy = [ "multi-user.target" ];
          after = [ "network-online.target" ];
          wants = [ "network-online.target" ];
          # Copied whole: the runner sets its own sandbox over it.
          serviceConfig = {
            DynamicUser = true;
            SupplementaryGroups = agent.extraGroups;
            EnvironmentFile = agent.environmentFile;
            ExecStart = lib.getExe agent.package;
            Restart = "on-failure";
            RestartSec = 15;
            CapabilityBoundingSet = "";
            NoNewPrivileges = true;
            ProtectSystem = "strict";
            PrivateTmp = true;
            PrivateDevices = true;
            PrivateUsers = true;
            ProtectHostname = true;
            ProtectClock = true;
            ProtectKernelTunables = true;
            ProtectKernelModules = true;
            ProtectKernelLogs = true;
            ProtectControlGroups = true;
            RestrictAddressFamilies = [ "AF_UNIX AF_INET AF_INET6" ];
            LockPersonality = true;
            MemoryDenyWriteExecute = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            PrivateMounts = true;
            SystemCallArchitectures = "native";
            SystemCallFilter = "~@clock @privileged @cpu-emulation @debug @keyring @module @mount @obsolete @raw-io @reboot @setuid @swap";
            BindReadOnlyPaths = [
              "-/etc/resolv.conf"
              "-/etc/nsswitch.conf"
              "-/etc/ssl/certs"
              "-/etc/static/ssl/certs"
              "-/etc/hosts"
              "-/etc/localtime"
            ];
          };
          inherit (agent) environment path;
        }
      ) (lib.filterAttrs (_: a: a.enable) config.services.woodpecker-agents.agents);
    }
  ];
}
