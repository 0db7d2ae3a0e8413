# services.waymark-serve: the deployment-sync queue (`waymark serve`,
# docs/serve.md) as a systemd service.
#
# The service keeps its database and logs in `stateDir` (systemd's
# StateDirectory, owned by its user) and its deploy records beside them. Token
# files and ssh identities are never copied into the store or the unit: they
# are loaded as systemd credentials (LoadCredential=), readable by the
# service alone under $CREDENTIALS_DIRECTORY, and the service is given their
# paths there.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.waymark-serve;
  stateDirName = lib.removePrefix "/var/lib/" cfg.stateDir;
  tokenCreds = lib.imap0 (i: path: {
    name = "tokens-${toString i}";
    inherit path;
  }) cfg.tokenFiles;
  identityCreds = lib.mapAttrsToList (tenant: path: {
    name = "identity-${tenant}";
    inherit tenant path;
  }) cfg.identityFiles;
  args =
    [
      "serve"
      "--listen"
      cfg.listenAddress
      "--state-dir"
      cfg.stateDir
      "--workers"
      (toString cfg.workers)
    ]
    ++ lib.concatMap (c: [
      "--tokens"
      "%d/${c.name}"
    ]) tokenCreds
    ++ lib.concatMap (c: [
      "--identity"
      "${c.tenant}=%d/${c.name}"
    ]) identityCreds
    ++ lib.optionals (cfg.authorizeUrl != null) [
      "--authorize-url"
      cfg.authorizeUrl
    ]
    ++ lib.optionals (cfg.database != null) [
      "--database"
      cfg.database
    ]
    ++ cfg.extraArgs;
  inStore = p: lib.hasPrefix builtins.storeDir (toString p);
in
{
  options.services.waymark-serve = {
    enable = lib.mkEnableOption "the Waymark deployment-sync queue service (`waymark serve`)";

    package = lib.mkOption {
      type = lib.types.package;
      example = lib.literalExpression "inputs.waymark.packages.\${pkgs.stdenv.hostPlatform.system}.waymark";
      description = "The `waymark` package whose `waymark serve` runs.";
    };

    listenAddress = lib.mkOption {
      type = lib.types.strMatching "[^ ]+:[0-9]+";
      default = "127.0.0.1:8750";
      example = "[::]:8750";
      description = ''
        Address and port the HTTP API listens on. Plain HTTP: put a TLS
        proxy in front of it for anything but loopback.
      '';
    };

    stateDir = lib.mkOption {
      type = lib.types.strMatching "/var/lib/[^/].*[^/]";
      default = "/var/lib/waymark-serve";
      description = ''
        The service's state: its SQLite database, job logs and the
        configuration documents of jobs (systemd's StateDirectory, so under
        /var/lib). The deploy records are kept in its `deploy` directory.
      '';
    };

    tokenFiles = lib.mkOption {
      type = lib.types.listOf (lib.types.strMatching "/.+");
      default = [ ];
      example = [ "/run/secrets/waymark-serve-tokens" ];
      description = ''
        Token files: lines `TENANT sha256:HEX`, the SHA-256 of each bearer
        token (`printf %s "$TOKEN" | sha256sum`), never the token. Loaded as
        systemd credentials. Empty: a token of tenant `default` is made in
        {file}`<stateDir>/token` on first start.
      '';
    };

    identityFiles = lib.mkOption {
      type = lib.types.attrsOf (lib.types.strMatching "/.+");
      default = { };
      example = {
        acme = "/run/secrets/acme-deploy-key";
      };
      description = ''
        The ssh private key each tenant's hosts are reached with, by tenant.
        Loaded as systemd credentials; ssh reads them at run time, the
        service never stores nor prints them.
      '';
    };

    authorizeUrl = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "https?://.+");
      default = null;
      example = "https://panel.example.org/waymark/authorize";
      description = ''
        The panel's authorisation callback: each request is POSTed as
        `{"tenant","action","deployment"}`; a 2xx allows it, anything else
        (or no answer) denies it. Answers are kept for 10 s.
      '';
    };

    database = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "postgres(ql)?://.+");
      default = null;
      example = "postgres://waymark-serve@localhost/waymark?host=/run/postgresql";
      description = ''
        A PostgreSQL database for jobs, events and logs instead of SQLite in
        the state directory; several replicas may share it. The URL lands in
        the Nix store and the unit: authenticate over the unix socket (peer)
        rather than with a password in it.
      '';
    };

    workers = lib.mkOption {
      type = lib.types.ints.unsigned;
      default = 4;
      description = "Jobs run at the same time (0: accept jobs and run none).";
    };

    remoteCommand = lib.mkOption {
      type = lib.types.str;
      default = "waymark";
      description = "The `waymark` command on the hosts, for their known-good marks (WAYMARK_REMOTE_COMMAND).";
    };

    user = lib.mkOption {
      type = lib.types.str;
      default = "waymark-serve";
      description = "The user the service runs as (created when left at the default).";
    };

    extraArgs = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      example = [ "--authorize-ttl" "30" ];
      description = "More arguments of `waymark serve`.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions =
      map (p: {
        assertion = !inStore p;
        message = "services.waymark-serve.tokenFiles: ${p} is in the Nix store, readable by every user: keep token files outside it.";
      }) cfg.tokenFiles
      ++ lib.mapAttrsToList (tenant: p: {
        assertion = !inStore p;
        message = "services.waymark-serve.identityFiles.${tenant}: ${p} is in the Nix store, readable by every user: keep keys outside it.";
      }) cfg.identityFiles
      ++ lib.mapAttrsToList (tenant: _: {
        assertion = builtins.match "[a-z0-9][a-z0-9._-]{0,62}" tenant != null;
        message = "services.waymark-serve.identityFiles: \"${tenant}\" is not a tenant name (a-z, 0-9, '.', '_', '-').";
      }) cfg.identityFiles;

    users.users = lib.mkIf (cfg.user == "waymark-serve") {
      waymark-serve = {
        isSystemUser = true;
        group = "waymark-serve";
        description = "Waymark deployment-sync queue";
      };
    };
    users.groups = lib.mkIf (cfg.user == "waymark-serve") { waymark-serve = { }; };

    systemd.services.waymark-serve = {
      description = "Waymark deployment-sync queue";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      # What the deploys run: nix (evaluate, build, copy), ssh, git (fetching
      # the fleet flake at a revision).
      # waymark-lint: not a harness dependency list (the deploy service's own programs, not a test environment)
      path = [
        cfg.package
        pkgs.nix
        pkgs.openssh
        pkgs.git
      ];
      environment = {
        WAYMARK_STATE_DIR = "${cfg.stateDir}/deploy";
        WAYMARK_REMOTE_COMMAND = cfg.remoteCommand;
        NO_COLOR = "1";
      };
      serviceConfig = import ./hardening.nix // {
        Type = "exec";
        User = cfg.user;
        Group = config.users.users.${cfg.user}.group or cfg.user;
        ExecStart = lib.escapeShellArgs ([ (lib.getExe' cfg.package "waymark") ] ++ args);
        StateDirectory = stateDirName;
        StateDirectoryMode = "0700";
        LoadCredential = map (c: "${c.name}:${c.path}") (tokenCreds ++ identityCreds);
        # A stop is a SIGTERM: the API drains; a job left running is recovered
        # at the next start (re-queued, or needs-reconcile after activation).
        Restart = "on-failure";
        RestartSec = 2;
        # The engine's ssh masters and nix processes end with the service.
        KillMode = "control-group";
        ProtectHome = true;
        ReadWritePaths = [ cfg.stateDir ];
      };
    };
  };
}
