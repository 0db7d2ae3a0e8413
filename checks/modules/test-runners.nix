# Runners: each kind plugs the harness env into its unit (upstream modules'
# own options for gitea-actions and woodpecker; `harness-run` for the units
# Waymark writes), with a dedicated user, a GC-roots directory and the same
# test-runner sandbox (checked on every kind's unit); what each kind runs by
# name is required of the env; bad combinations fail with a message naming
# the option.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };

  base = t.eval [ ./all-runner-kinds.nix ];
  h = base.waymark.harness;
  envPath = "${h.env}";
  run = "${h.entrypoint}/bin/harness-run";
  unitOf = name: base.systemd.services.${base.waymark.runners.${name}.unit};
  runners = base.waymark.runners;

  with' = extra: t.eval [ ./all-runner-kinds.nix extra ];
  kinds = import ../../modules/runner-kinds.nix { inherit lib; };

  # The sandbox settings of a unit that differ from what a runner's unit must
  # have: Waymark's hardening, the settings test jobs need off (absent counts
  # as off), and with the kvm group /dev/kvm let through.
  sandboxDrift =
    config: r:
    let
      c = config.systemd.services.${r.unit}.serviceConfig;
      want = kinds.sandbox // lib.optionalAttrs (lib.elem "kvm" r.extraGroups) kinds.kvmDevice;
      offWhenAbsent = v: v == false || v == [ ];
    in
    lib.filter (k: if c ? ${k} then c.${k} != want.${k} else !(offWhenAbsent want.${k})) (lib.attrNames want);
  driftOf = config: lib.mapAttrs (_: sandboxDrift config) config.waymark.runners;
  noDrift = lib.mapAttrs (_: _: [ ]) runners;

  # Every kind in the kvm group.
  allKvm = with' {
    waymark.runners = lib.mapAttrs (_: _: { extraGroups = [ "kvm" ]; }) runners;
  };

  requiredBy = config: lib.attrNames config.waymark.harness.requiredCommands;
  only =
    extra:
    t.eval [
      {
        networking.hostName = "one";
        waymark.harness.enable = true;
      }
      extra
    ];
in
t.all [
  (t.clean "a runner of every kind evaluates" base)

  # Shared by every kind.
  (t.ok "every runner unit's PATH is exactly the harness env's" (
    lib.all (r: (base.systemd.services.${r.unit}.environment.PATH) == h.exports.PATH) (lib.attrValues runners)
  ))
  (t.ok "every runner unit gets the harness variables" (
    lib.all (r: base.systemd.services.${r.unit}.environment.LANG == "C.UTF-8") (lib.attrValues runners)
  ))
  (t.ok "every runner has a dedicated system user and group" (
    lib.all (
      r: base.users.users.${r.user}.isSystemUser && base.users.users.${r.user}.group == r.user && base.users.groups ? ${r.user}
    ) (lib.attrValues runners)
  ))
  (t.ok "every runner's GC-roots directory is created for its user and writable in its sandbox" (
    lib.all (
      r:
      base.systemd.tmpfiles.settings."10-waymark-runners".${r.gcRootsDir}.d.user == r.user
      && lib.elem r.gcRootsDir base.systemd.services.${r.unit}.serviceConfig.ReadWritePaths
      && lib.hasPrefix "/nix/var/nix/gcroots/" r.gcRootsDir
    ) (lib.attrValues runners)
  ))
  # NixOS allows every user by default ("*"), so the check narrows it first.
  (t.ok "every runner user may use the Nix daemon when allowed-users is narrowed" (
    let
      c = with' { nix.settings.allowed-users = [ "@wheel" ]; };
      effective = c.nix.settings.allowed-users ++ c.nix.settings.extra-allowed-users or [ ];
    in
    c.nix.settings.allowed-users == [ "@wheel" ] && lib.all (r: lib.elem r.user effective) (lib.attrValues runners)
  ))
  (t.eq "every runner unit has the test-runner sandbox (hardening on; MemoryDenyWriteExecute, PrivateUsers, syscall and address-family filters off)" noDrift (driftOf base))
  (t.eq "every kind in the kvm group gets /dev/kvm through the sandbox" noDrift (driftOf allKvm))
  (t.ok "every kind in the kvm group: PrivateDevices off, /dev/kvm allowed" (
    lib.all (
      r:
      let
        c = allKvm.systemd.services.${r.unit}.serviceConfig;
      in
      c.PrivateDevices == false && lib.elem "/dev/kvm rw" c.DeviceAllow && c.DevicePolicy == "closed"
    ) (lib.attrValues runners)
  ))
  (t.failsWith "a device group the sandbox hides is refused" [ "waymark.runners.drone.extraGroups: video would do nothing" ] (
    with' { waymark.runners.drone.extraGroups = [ "video" ]; }
  ))
  (t.ok "every runner unit keeps serving when one job hits the OOM killer" (
    lib.all (r: base.systemd.services.${r.unit}.serviceConfig.OOMPolicy == "continue") (lib.attrValues runners)
  ))

  # gitea-actions: upstream's module, the env as hostPackages.
  (t.eq "gitea-actions: the env is the instance's hostPackages" [ envPath ] (
    map toString base.services.gitea-actions-runner.instances.forgejo.hostPackages
  ))
  (t.eq "gitea-actions: the unit is upstream's, running as gitea-runner" "gitea-runner" (unitOf "forgejo").serviceConfig.User)
  (t.ok "gitea-actions: the instance has a host label" (
    lib.any (lib.hasSuffix ":host") base.services.gitea-actions-runner.instances.forgejo.labels
  ))
  (t.failsWith "gitea-actions: without a :host label no job gets the env" [ "no label ends in \":host\"" ] (
    with' { waymark.runners.forgejo.giteaActions.labels = lib.mkForce [ "ubuntu-latest:docker://node:20" ]; }
  ))
  (t.failsWith "gitea-actions: a second list in hostPackages is refused" [
    "services.gitea-actions-runner.instances.forgejo.hostPackages must be the harness env alone"
  ] (with' ({ pkgs, ... }: { services.gitea-actions-runner.instances.forgejo.hostPackages = [ pkgs.git-lfs ]; })))
  (t.failsWith "gitea-actions: another user is refused" [ "must be \"gitea-runner\"" ] (
    with' { waymark.runners.forgejo.user = "ci"; }
  ))
  (t.failsWith "gitea-actions: url and tokenFile are required" [ "needs giteaActions.url and giteaActions.tokenFile" ] (
    only { waymark.runners.r.kind = "gitea-actions"; }
  ))
  (t.failsWith "gitea-actions: the registration script's commands and the jobs' shell must be in the env" [
    "waymark.runners.forgejo (the upstream unit's registration script runs these by name): cat (from pkgs.coreutils or pkgs.coreutils-full), cut"
    "grep (from pkgs.gnugrep)"
    "sed (from pkgs.gnused), sha256sum"
    "waymark.runners.forgejo (host jobs' run steps use bash): bash"
  ] (
    with' ({ pkgs, ... }: { waymark.harness.packages = lib.mkForce [ pkgs.gitMinimal ]; })
  ))
  (t.failsWith "gitea-actions: forgejo-runner 12 or later (which appends its own git to PATH) needs the env's git" [
    "waymark.runners.forgejo (forgejo-runner 12.4.0 appends its own git to the jobs' PATH, so the env's must come first): git (from"
  ] (
    with' (
      { pkgs, ... }:
      {
        services.gitea-actions-runner.package = pkgs.forgejo-runner // {
          version = "12.4.0";
        };
        waymark.runners = lib.mkForce {
          forgejo = {
            kind = "gitea-actions";
            giteaActions = {
              url = "https://forge.example.com";
              tokenFile = "/run/secrets/forgejo";
            };
          };
        };
        waymark.harness.packages = lib.mkForce [
          pkgs.bash
          pkgs.coreutils
          pkgs.gnugrep
          pkgs.gnused
        ];
      }
    )
  ))
  (t.ok "gitea-actions: forgejo-runner before 12 (no wrapper) adds no git requirement" (
    !lib.any (lib.hasInfix "appends its own git") (
      requiredBy (with' ({ pkgs, ... }: { services.gitea-actions-runner.package = pkgs.forgejo-runner // { version = "11.3.1"; }; }))
    )
  ))

  # woodpecker: upstream's module, the env as path.
  (t.eq "woodpecker: the env is the agent's path" [ envPath ] (
    map toString base.services.woodpecker-agents.agents.woodpecker.path
  ))
  (t.eq "woodpecker: the local backend" "local" (unitOf "woodpecker").environment.WOODPECKER_BACKEND)
  (t.eq "woodpecker: the static user" "waymark-runner-woodpecker" (unitOf "woodpecker").serviceConfig.User)
  (t.failsWith "woodpecker: a second list in path is refused" [ "agents.woodpecker.path must be the harness env alone" ] (
    with' ({ pkgs, ... }: { services.woodpecker-agents.agents.woodpecker.path = [ pkgs.git-lfs ]; })
  ))
  (t.failsWith "woodpecker: the local backend's clone step and shell must be in the env" [
    "waymark.runners.woodpecker (the local backend's clone step runs plugin-git, downloading one from GitHub when PATH has none, and git): plugin-git (from pkgs.woodpecker-plugin-git), git (from"
    "waymark.runners.woodpecker (a step's image names its shell, found on PATH; bash is upstream's example): bash"
  ] (with' ({ pkgs, ... }: { waymark.harness.packages = lib.mkForce [ pkgs.coreutils ]; })))
  (t.eq "woodpecker: environment files outside the store reach the unit" [ "/run/secrets/wp.env" ] (
    with' { waymark.runners.woodpecker.woodpecker.environmentFile = [ "/run/secrets/wp.env" ]; }
  ).systemd.services.woodpecker-agent-woodpecker.serviceConfig.EnvironmentFile)
  (t.throws "woodpecker: a relative environment file is a type error" (
    with' { waymark.runners.woodpecker.woodpecker.environmentFile = [ "secrets/wp.env" ]; }
  ).waymark.runners.woodpecker.woodpecker.environmentFile)
  (t.throws "woodpecker: an environment file in the store is a type error" (
    with' { waymark.runners.woodpecker.woodpecker.environmentFile = [ "/nix/store/00000000000000000000000000000000-wp.env" ]; }
  ).waymark.runners.woodpecker.woodpecker.environmentFile)
  (t.throws "gitea-actions: a token file in the store is a type error" (
    with' { waymark.runners.forgejo.giteaActions.tokenFile = lib.mkForce "/nix/store/00000000000000000000000000000000-token"; }
  ).waymark.runners.forgejo.giteaActions.tokenFile)

  # drone-exec: our unit, through harness-run.
  (t.ok "drone-exec: starts through harness-run" (lib.hasPrefix "${run} " (unitOf "drone").serviceConfig.ExecStart))
  (t.eq "drone-exec: the harness variables reach the steps" "LANG:C.UTF-8" (unitOf "drone").environment.DRONE_RUNNER_ENVIRON)
  (t.eq "drone-exec: the admin/admin dashboard is off" "true" (unitOf "drone").environment.DRONE_UI_DISABLE)
  (t.eq "drone-exec: the secret comes from a file outside the store" "/run/secrets/drone.env" (unitOf "drone").serviceConfig.EnvironmentFile)
  (t.failsWith "drone-exec: the clone step's git must be in the env" [ "waymark.runners.drone (drone-runner-exec's clone step runs git): git" ] (
    with' ({ pkgs, ... }: { waymark.harness.packages = lib.mkForce [ pkgs.bash pkgs.coreutils pkgs.gnugrep pkgs.gnused pkgs.woodpecker-plugin-git ]; })
  ))
  (t.failsWith "drone-exec: a variable DRONE_RUNNER_ENVIRON cannot carry is refused" [ "cannot carry a comma or a colon" "URL" ] (
    with' { waymark.harness.environment.URL = "https://example.com"; }
  ))

  # command: our unit, through harness-run, hardened.
  (t.eq "command: starts through harness-run" "${run} ci/poll --forever" (unitOf "poller").serviceConfig.ExecStart)
  (t.eq "command: its home is its state directory" "/var/lib/waymark-runners/poller" base.users.users.waymark-runner-poller.home)
  (t.eq "command: extra groups" [ "kvm" ] (unitOf "poller").serviceConfig.SupplementaryGroups)
  (t.failsWith "command: the command is required" [ "the command kind needs waymark.runners.r.command" ] (
    only { waymark.runners.r.kind = "command"; }
  ))
  (t.failsWith "command is only for the command kind" [ "waymark.runners.drone.command is only used by the command kind" ] (
    with' { waymark.runners.drone.command = "true"; }
  ))

  # Bad combinations.
  (t.failsWith "a runner needs the harness" [ "waymark.runners.r runs jobs with the harness env: set waymark.harness.enable = true" ] (
    t.eval [ { waymark.runners.r = { kind = "command"; command = "true"; }; } ]
  ))
  (t.failsWith "a user name too long for users.users" [ "longer than 31 characters" ] (
    only { waymark.runners.a-runner-with-a-long-name = { kind = "command"; command = "true"; }; }
  ))
  (t.throws "an unknown kind is a type error" (only { waymark.runners.r.kind = "jenkins"; }).waymark.runners.r.kind)
  (t.ok "a disabled runner writes nothing" (
    let
      c = only {
        waymark.runners.r = {
          kind = "command";
          command = "true";
          enable = false;
        };
      };
    in
    !(c.systemd.services ? waymark-runner-r) && !(c.users.users ? waymark-runner-r)
  ))
]
