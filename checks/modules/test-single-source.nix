# Single source: on the example CI host (a runner, two sweeps and the host
# packages), every consumer references the same harness env store path, the
# sweeps start through the same entrypoint as the command runners, and every
# consumer unit's environment is exactly the harness exports.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };

  ci = t.eval [ ../../hosts/ci/configuration.nix ];
  h = ci.waymark.harness;
  envPath = "${h.env}";
  runPath = "${h.entrypoint}/bin/harness-run";
  services = ci.systemd.services;

  runnerUnit = services.${ci.waymark.runners.forgejo.unit};
  sweepUnits = lib.mapAttrs (_: s: services.${s.unit}) ci.waymark.sweeps;

  # Every place a consumer names its commands, as strings.
  references = {
    "runner unit PATH" = runnerUnit.environment.PATH;
    "runner hostPackages" = toString ci.services.gitea-actions-runner.instances.forgejo.hostPackages;
    "host systemPackages" = toString ci.environment.systemPackages;
    "entrypoint script" = h.entrypoint.text;
  }
  // lib.mapAttrs' (
    name: u: lib.nameValuePair "sweep ${name} PATH" u.environment.PATH
  ) sweepUnits
  // lib.mapAttrs' (
    name: u: lib.nameValuePair "sweep ${name} ExecStart (through the entrypoint)" u.serviceConfig.ExecStart
  ) sweepUnits;

  envsSeen = lib.unique (lib.concatMap t.envPathsIn (lib.attrValues references));

  timerView = c: {
    inherit (c) OnCalendar RandomizedDelaySec Persistent;
  };

  # A consumer's environment is the exports, variable by variable.
  exportsOf = unit: lib.filterAttrs (n: _: h.exports ? ${n}) unit.environment;
in
t.all [
  (t.clean "the CI host evaluates" ci)
  (t.eq "two sweeps and one runner" [
    "nightly"
    "weekly"
  ] (lib.attrNames ci.waymark.sweeps))
  (t.eq "every consumer references exactly one env, the harness env" [ envPath ] envsSeen)
  (t.ok "each consumer references the env" (
    lib.all (s: t.envPathsIn s == [ envPath ]) (
      lib.attrValues (removeAttrs references [ "sweep nightly ExecStart (through the entrypoint)" "sweep weekly ExecStart (through the entrypoint)" ])
    )
  ))
  (t.ok "the entrypoint puts exactly the env on PATH" (
    lib.hasInfix "export PATH=${lib.escapeShellArg "${envPath}/bin:${envPath}/sbin"}" h.entrypoint.text
  ))
  (t.ok "the entrypoint sets no PATH but the env's" (
    builtins.length (lib.filter (l: lib.hasInfix "export PATH=" l) (lib.splitString "\n" h.entrypoint.text)) == 1
  ))
  (t.ok "every sweep starts through the entrypoint" (
    lib.all (u: lib.hasPrefix "${runPath} " u.serviceConfig.ExecStart) (lib.attrValues sweepUnits)
  ))
  (t.eq "the runner unit's environment is the exports" h.exports (exportsOf runnerUnit))
  (t.ok "every sweep unit's environment is the exports" (
    lib.all (u: exportsOf u == h.exports) (lib.attrValues sweepUnits)
  ))
  (t.ok "the host packages are the env and the entrypoint" (
    lib.all (p: lib.elem p (map toString ci.environment.systemPackages)) [
      envPath
      "${h.entrypoint}"
    ]
  ))
  (t.ok "the env holds the declared packages and the Python env" (
    builtins.length h.contents == builtins.length ci.waymark.harness.packages + 1
  ))
  (t.eq "the sweeps are timers with delay and persistence" {
    nightly = {
      OnCalendar = [ "*-*-* 02:00:00" ];
      RandomizedDelaySec = "30min";
      Persistent = true;
    };
    weekly = {
      OnCalendar = [ "Sun 03:00:00" ];
      RandomizedDelaySec = "1h";
      Persistent = true;
    };
  } (lib.mapAttrs (_: s: timerView ci.systemd.timers.${s.unit}.timerConfig) ci.waymark.sweeps))
]
