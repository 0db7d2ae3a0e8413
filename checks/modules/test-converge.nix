# The convergence controller as a service: its command line (the fleet's
# checkout, the per-host settings file, the state directory, metrics), the
# settings file's content, the ssh key as a credential, and the refused
# combinations.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };

  host =
    extra:
    t.eval [
      (
        { pkgs, ... }:
        {
          networking.hostName = "controller";
          services.waymark-converge = {
            enable = true;
            package = pkgs.runCommand "waymark" { } "mkdir -p $out/bin";
            flake = "/srv/fleet";
          };
        }
      )
      extra
    ];

  unit = c: c.systemd.services.waymark-converge;
  execStart = c: (unit c).serviceConfig.ExecStart;
  # What the settings file holds (the file itself is not written by an
  # evaluation).
  settingsOf = c: c.services.waymark-converge.finalSettings;

  plain = host { };
  tuned = host {
    services.waymark-converge = {
      drift = "restore";
      hosts.db.hold = true;
      hosts.web1.drift = "report";
      hosts.web2.pin = "20261123T172900Z-1a2b3c4";
      metricsAddress = "127.0.0.1:9477";
      sshKeyFile = "/run/keys/deploy";
      extraArgs = [
        "--max-attempts"
        "3"
      ];
    };
  };
in
t.all [
  (t.clean "defaults evaluate" plain)
  (t.ok "off unless enabled" (!((t.eval [ ]).systemd.services ? waymark-converge)))
  (t.ok "the command line names the checkout, the settings and the state" (
    lib.all (w: lib.hasInfix w (execStart plain)) [
      "/bin/waymark converge"
      "--flake /srv/fleet"
      "--state-dir /var/lib/waymark"
      "--remote-waymark waymark"
      "-waymark-converge.json"
    ]
  ))
  (t.eq "default settings: report drift, no host named" {
    drift = "report";
    hosts = { };
  } (settingsOf plain))
  (t.eq "per-host settings in the form --config reads" {
    drift = "restore";
    hosts = {
      db.desired = "hold";
      web1 = {
        drift = "report";
        desired = "release";
      };
      web2.desired.mark = "20261123T172900Z-1a2b3c4";
    };
  } (settingsOf tuned))
  (t.ok "metrics and extra arguments" (
    lib.hasInfix "--metrics 127.0.0.1:9477 --max-attempts 3" (execStart tuned)
  ))
  (t.eq "the ssh key is a credential, not a store path" {
    cred = [ "ssh-key:/run/keys/deploy" ];
    opts = "-i %d/ssh-key";
  } {
    cred = (unit tuned).serviceConfig.LoadCredential;
    opts = (unit tuned).environment.NIX_SSHOPTS;
  })
  (t.ok "a switch does not restart it" (!(unit plain).restartIfChanged))
  (t.failsWith "hold and pin together are refused" [ "hosts.db: hold and pin exclude each other" ] (
    host {
      services.waymark-converge.hosts.db = {
        hold = true;
        pin = "20261123T172900Z-1a2b3c4";
      };
    }
  ))
]
