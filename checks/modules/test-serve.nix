# services.waymark-serve: the unit runs `waymark serve` with the listen
# address, state directory and workers given; token files and identities
# reach it as systemd credentials (never the store, never the command line's
# own paths); its state is a StateDirectory of its own user; keys or tokens in
# the store and bad tenant names are refused.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };

  package = { pkgs, ... }: {
    services.waymark-serve.package = pkgs.runCommand "waymark" { meta.mainProgram = "waymark"; } "mkdir -p $out/bin";
  };
  host =
    extra:
    t.eval [
      {
        networking.hostName = "panel";
        services.waymark-serve.enable = true;
      }
      package
      extra
    ];

  plain = host { };
  full = host {
    services.waymark-serve = {
      listenAddress = "[::]:9000";
      stateDir = "/var/lib/panel/queue";
      tokenFiles = [
        "/run/secrets/tokens-a"
        "/run/secrets/tokens-b"
      ];
      identityFiles.acme = "/run/secrets/acme-key";
      authorizeUrl = "https://panel.example.org/authorize";
      database = "postgres://waymark-serve@localhost/waymark?host=/run/postgresql";
      workers = 2;
      extraArgs = [
        "--authorize-ttl"
        "30"
      ];
    };
  };
  unit = c: c.systemd.services.waymark-serve;
  # The command line's words, unquoted (escapeShellArgs quotes only some).
  words =
    c:
    map (w: lib.removePrefix "'" (lib.removeSuffix "'" w)) (
      lib.tail (lib.splitString " " (unit c).serviceConfig.ExecStart)
    );
in
t.all [
  (t.clean "defaults evaluate" plain)
  (t.eq "defaults: loopback, /var/lib/waymark-serve, four workers, a token made on first start" [
    "serve"
    "--listen"
    "127.0.0.1:8750"
    "--state-dir"
    "/var/lib/waymark-serve"
    "--workers"
    "4"
  ] (words plain))
  (t.eq "its own state directory and user" {
    StateDirectory = "waymark-serve";
    StateDirectoryMode = "0700";
    User = "waymark-serve";
    Group = "waymark-serve";
    LoadCredential = [ ];
  } { inherit ((unit plain).serviceConfig) StateDirectory StateDirectoryMode User Group LoadCredential; })
  (t.ok "a system user" plain.users.users.waymark-serve.isSystemUser)
  (t.ok "hardened like the other units" (
    (unit plain).serviceConfig.ProtectSystem == "strict" && (unit plain).serviceConfig.NoNewPrivileges
  ))
  (t.eq "the deploy records beside the state" "/var/lib/waymark-serve/deploy" (unit plain).environment.WAYMARK_STATE_DIR)
  (t.clean "every option evaluates" full)
  (t.eq "tokens and identities as credentials" [
    "tokens-0:/run/secrets/tokens-a"
    "tokens-1:/run/secrets/tokens-b"
    "identity-acme:/run/secrets/acme-key"
  ] (unit full).serviceConfig.LoadCredential)
  (t.eq "the command line names the credentials' copies, the rest as given" [
    "serve"
    "--listen"
    "[::]:9000"
    "--state-dir"
    "/var/lib/panel/queue"
    "--workers"
    "2"
    "--tokens"
    "%d/tokens-0"
    "--tokens"
    "%d/tokens-1"
    "--identity"
    "acme=%d/identity-acme"
    "--authorize-url"
    "https://panel.example.org/authorize"
    "--database"
    "postgres://waymark-serve@localhost/waymark?host=/run/postgresql"
    "--authorize-ttl"
    "30"
  ] (words full))
  (t.eq "a nested state directory" "panel/queue" (unit full).serviceConfig.StateDirectory)
  (t.failsWith "a key in the store is refused" [ "is in the Nix store" ] (
    host { services.waymark-serve.identityFiles.acme = "${builtins.storeDir}/abc-key"; }
  ))
  (t.failsWith "a bad tenant name is refused" [ "is not a tenant name" ] (
    host { services.waymark-serve.identityFiles."Acme Corp" = "/run/secrets/k"; }
  ))
  (t.ok "nothing without enable" (!(t.eval [ package ]).systemd.services ? waymark-serve))
]
