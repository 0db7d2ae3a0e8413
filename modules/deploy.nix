# waymark.deploy: how Waymark deploys this host.
#
# Declarations only: nothing here changes the host's system. The deploy tool
# reads them from every host of the fleet through `lib.fleet` (nix/lib), which
# also checks what a single host cannot: that build hosts and dependencies name
# deployable hosts, and that dependencies have no cycle.
{
  config,
  lib,
  ...
}:
let
  cfg = config.waymark.deploy;

  hostNameType = lib.types.strMatching "[A-Za-z0-9][A-Za-z0-9._-]*";

  healthCheckModule =
    { config, ... }:
    {
      options = {
        name = lib.mkOption {
          type = lib.types.strMatching "[A-Za-z0-9][A-Za-z0-9._-]*";
          example = "web-responds";
          description = "The check's name in reports.";
        };

        command = lib.mkOption {
          type = lib.types.nullOr lib.types.nonEmptyStr;
          default = null;
          example = "systemctl is-active --quiet nginx.service";
          description = "A command run on the target after activation; exit status 0 passes.";
        };

        url = lib.mkOption {
          type = lib.types.nullOr (lib.types.strMatching "https?://.+");
          default = null;
          example = "http://localhost:8080/healthz";
          description = "An HTTP(S) URL fetched from the target; a 2xx answer passes.";
        };

        timeout = lib.mkOption {
          type = lib.types.ints.positive;
          default = 30;
          description = "Seconds the check may take, retries included.";
        };

        kind = lib.mkOption {
          type = lib.types.enum [
            "command"
            "http"
          ];
          readOnly = true;
          default = if config.url != null then "http" else "command";
          defaultText = lib.literalExpression ''if url != null then "http" else "command"'';
          description = "Which of `command` and `url` the check uses.";
        };
      };
    };

  checkNames = map (c: c.name) cfg.healthChecks;
  duplicateChecks = lib.unique (lib.filter (n: lib.count (m: m == n) checkNames > 1) checkNames);
  badChecks = lib.filter (c: (c.command == null) == (c.url == null)) cfg.healthChecks;
in
{
  options.waymark.deploy = {
    enable = lib.mkEnableOption "deploying this host with Waymark";

    name = lib.mkOption {
      type = hostNameType;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = ''
        The host's name in the fleet, used by other hosts'
        {option}`waymark.deploy.buildHost` and
        {option}`waymark.deploy.dependsOn`. `lib.fleet` checks it matches the
        host's `nixosConfigurations` attribute.
      '';
    };

    targetHost = lib.mkOption {
      type = lib.types.nonEmptyStr;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      example = "ci1.example.com";
      description = "The address Waymark connects to over SSH: a host name or an IP address.";
    };

    sshUser = lib.mkOption {
      type = lib.types.strMatching "[a-z_][a-z0-9_-]*";
      default = "root";
      example = "deploy";
      description = "The SSH user on the target.";
    };

    buildHost = lib.mkOption {
      type = lib.types.nullOr hostNameType;
      default = null;
      example = "builder";
      description = ''
        The fleet host that builds this host's closure and copies it here,
        by its {option}`waymark.deploy.name`. `null` builds on the machine
        running Waymark.
      '';
    };

    allowBuildOnTarget = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether the closure may be built on the target itself when it cannot
        be copied from the build host. Off by default: a target that builds
        runs compilers on a production host and may differ from what was
        tested.
      '';
    };

    tags = lib.mkOption {
      type = lib.types.listOf (lib.types.strMatching "[A-Za-z0-9][A-Za-z0-9._-]*");
      default = [ ];
      example = [
        "ci"
        "eu-west"
      ];
      description = "Tags for selecting hosts (`--on @tag`).";
    };

    healthChecks = lib.mkOption {
      type = lib.types.listOf (lib.types.submodule healthCheckModule);
      default = [ ];
      example = lib.literalExpression ''
        [
          { name = "sshd"; command = "systemctl is-active --quiet sshd.service"; }
          { name = "web"; url = "http://localhost/healthz"; timeout = 60; }
        ]
      '';
      description = ''
        Checks that must pass after activation before the deploy is
        confirmed. Each has exactly one of `command` and `url`.
      '';
    };

    activationTimeout = lib.mkOption {
      type = lib.types.ints.positive;
      default = 300;
      description = "Seconds activation (switch-to-configuration) may take before the deploy counts as failed.";
    };

    confirmTimeout = lib.mkOption {
      type = lib.types.ints.positive;
      default = 60;
      description = ''
        Seconds the target waits for Waymark to confirm it (after the health
        checks) before rolling back on its own.
      '';
    };

    bootOnInhibitedSwitch = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        What to do when the new closure cannot be activated at run time because a
        switch inhibitor (`system.switch.inhibitors`, e.g. the D-Bus
        implementation) changed: `false` leaves the host as it was; `true` makes
        the new closure the boot default (system profile and boot entry) to run
        after the next reboot. Either way the running system is unchanged and the
        closure is not marked known-good until a deploy has seen it run.
      '';
    };

    tagReleases = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = "Whether a successful deploy of this host gets a release tag in git.";
    };

    signingKeyFile = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "/.+");
      default = null;
      example = "/var/lib/waymark/signing-key.sec";
      description = ''
        On a build host: the secret key (`nix key generate-secret`) that signs
        the closures it builds before they are copied to their targets. The
        targets trust its public key through {option}`nix.settings.trusted-public-keys`,
        so nobody has to become a trusted user or skip signature checks. A
        path on the build host, read there; never copied into the store.
      '';
    };

    trustedBuilderKeys = lib.mkOption {
      type = lib.types.listOf (lib.types.strMatching "[^:[:space:]]+:[A-Za-z0-9+/=]+");
      default = [ ];
      example = [ "builder-1:7pA2lk0Xq0Av8LdjB9CsF5nHUlkAwgWxr1hvfZ6Umh4=" ];
      description = ''
        Public keys of the build hosts' {option}`waymark.deploy.signingKeyFile`
        (`nix key convert-secret-to-public`), added to this host's
        `extra-trusted-public-keys`: closures they sign are accepted here.
      '';
    };

    dependsOn = lib.mkOption {
      type = lib.types.listOf hostNameType;
      default = [ ];
      example = [ "db" ];
      description = "Fleet hosts that must be deployed, and healthy, before this one.";
    };
  };

  config = lib.mkIf cfg.enable {
    nix.settings.extra-trusted-public-keys = lib.mkIf (cfg.trustedBuilderKeys != [ ]) cfg.trustedBuilderKeys;

    assertions = [
      {
        assertion = badChecks == [ ];
        message = "waymark.deploy.healthChecks: each check needs exactly one of command and url; not so for: ${lib.concatMapStringsSep ", " (c: c.name) badChecks}.";
      }
      {
        assertion = duplicateChecks == [ ];
        message = "waymark.deploy.healthChecks: duplicate names: ${lib.concatStringsSep ", " duplicateChecks}.";
      }
      {
        assertion = !(lib.elem cfg.name cfg.dependsOn);
        message = "waymark.deploy.dependsOn: ${cfg.name} cannot depend on itself.";
      }
      {
        assertion = cfg.buildHost != cfg.name;
        message = "waymark.deploy.buildHost names the host itself (${cfg.name}); it names another fleet host, or is null to build where Waymark runs (allowBuildOnTarget covers building on the target).";
      }
    ];
  };
}
