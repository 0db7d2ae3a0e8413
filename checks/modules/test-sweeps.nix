# Sweeps: a timer (schedule, randomised delay, persistent) starting a oneshot
# service through harness-run, with the harness exports as its environment,
# an OnFailure hook that logs to the journal, and no restart on switch.
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
      (t.harnessHost "sweeper")
      {
        waymark.sweeps.nightly = {
          command = "ci/run-tests --suite full";
          schedule = [
            "Mon..Fri 02:00"
            "Sat 04:00"
          ];
          randomizedDelaySec = "45min";
          onFailure = [ "notify-admins@%n.service" ];
        };
        waymark.sweeps.weekly = {
          command = "ci/run-tests --suite slow";
          schedule = "weekly";
          persistent = false;
        };
      }
      extra
    ];

  c = host { };
  h = c.waymark.harness;
  nightly = c.systemd.services.waymark-sweep-nightly;
  weekly = c.systemd.services.waymark-sweep-weekly;
  failed = c.systemd.services."waymark-sweep-failed@";
in
t.all [
  (t.clean "two sweeps evaluate" c)
  (t.eq "the timer: schedule, delay, persistence" {
    OnCalendar = [
      "Mon..Fri 02:00"
      "Sat 04:00"
    ];
    RandomizedDelaySec = "45min";
    Persistent = true;
  } { inherit (c.systemd.timers.waymark-sweep-nightly.timerConfig) OnCalendar RandomizedDelaySec Persistent; })
  (t.eq "persistence can be turned off" false c.systemd.timers.waymark-sweep-weekly.timerConfig.Persistent)
  (t.ok "the timer starts with the system" (lib.elem "timers.target" c.systemd.timers.waymark-sweep-nightly.wantedBy))
  (t.eq "a oneshot through the entrypoint" {
    Type = "oneshot";
    ExecStart = "${h.entrypoint}/bin/harness-run ci/run-tests --suite full";
  } { inherit (nightly.serviceConfig) Type ExecStart; })
  (t.eq "the environment is the exports (PATH forced over systemd's default path)" h.exports.PATH nightly.environment.PATH)
  (t.eq "failure starts the journal hook and the sweep's own units" [
    "waymark-sweep-failed@%n.service"
    "notify-admins@%n.service"
  ] nightly.onFailure)
  (t.ok "the hook logs at error priority from the failed unit's journal" (
    lib.hasInfix "<3>" failed.script && lib.hasInfix "journalctl --unit" failed.script && failed.scriptArgs == "%i"
  ))
  (t.eq "logs go to the journal under the sweep's name" "waymark-sweep-nightly" nightly.serviceConfig.SyslogIdentifier)
  (t.ok "a switch neither starts nor stops a run" (
    !nightly.restartIfChanged && nightly.unitConfig.X-StopOnRemoval == false
  ))
  (t.eq "the default user is created" {
    isSystemUser = true;
    group = "waymark-sweep";
  } { inherit (c.users.users.waymark-sweep) isSystemUser group; })
  (t.eq "a writable HOME whatever the user" "/var/lib/waymark-sweeps/weekly" weekly.environment.HOME)
  (t.ok "a GC-roots directory per sweep" (
    c.systemd.tmpfiles.settings."10-waymark-sweeps" ? "/nix/var/nix/gcroots/waymark-sweeps/nightly"
    && lib.elem "/nix/var/nix/gcroots/waymark-sweeps/nightly" nightly.serviceConfig.ReadWritePaths
  ))
  (t.ok "hardened" (nightly.serviceConfig.ProtectSystem == "strict" && nightly.serviceConfig.NoNewPrivileges))
  (t.failsWith "a sweep needs the harness" [ "waymark.sweeps.nightly runs through harness-run" ] (
    host { waymark.harness.enable = lib.mkForce false; }
  ))
  (t.failsWith "a sweep's own user must exist" [ "waymark.sweeps.weekly.user: \"ci\" is not declared in users.users" ] (
    host { waymark.sweeps.weekly.user = "ci"; }
  ))
  (t.clean "a declared user works" (host {
    waymark.sweeps.weekly.user = "ci";
    users.users.ci = {
      isSystemUser = true;
      group = "ci";
    };
    users.groups.ci = { };
  }))
  (t.throws "an empty schedule is a type error" (host { waymark.sweeps.weekly.schedule = lib.mkForce [ ]; }).waymark.sweeps.weekly.schedule)
]
