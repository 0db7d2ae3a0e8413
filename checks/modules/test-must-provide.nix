# Superset: `waymark.harness.mustProvide` fails evaluation, naming what is
# missing, when the env does not provide a command. The lists come from a
# realistic drifted CI host, whose three lists disagreed:
#
# - the runner's: upstream's default gitea-actions-runner hostPackages;
# - the nightly timer's own `path`: it had git-lfs and `script` (util-linux),
#   which the runner lacked;
# - the host's hand-added packages: python with pytest, and jq.
#
# Migrating means: mustProvide = every command any list provided; packages =
# one list. Keeping only the runner's list must fail and name git-lfs,
# script, python3, pytest and jq; the union must pass.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };

  commandsOf = {
    runner = [
      "bash"
      "cat"
      "curl"
      "awk"
      "git"
      "sed"
      "node"
      "wget"
    ];
    timer = [
      "bash"
      "git"
      "git-lfs"
      "script"
      "cat"
    ];
    host = [
      "git"
      "python3"
      "pytest"
      "jq"
    ];
  };
  mustProvide = lib.unique (lib.concatLists (lib.attrValues commandsOf));

  runnerList =
    pkgs: with pkgs; [
      bash
      coreutils
      curl
      gawk
      gitMinimal
      gnused
      nodejs
      wget
    ];
  timerList =
    pkgs: with pkgs; [
      bash
      coreutils
      git
      git-lfs
      util-linux
    ];
  hostList = pkgs: with pkgs; [ jq ];

  host =
    extra:
    t.eval [
      (
        { pkgs, ... }:
        {
          networking.hostName = "drifted";
          waymark.harness.enable = true;
          waymark.harness.mustProvide = mustProvide;
        }
      )
      extra
    ];

  onlyRunner = host ({ pkgs, ... }: { waymark.harness.packages = runnerList pkgs; });
  onlyTimer = host ({ pkgs, ... }: { waymark.harness.packages = timerList pkgs; });
  union = host (
    { pkgs, ... }:
    {
      waymark.harness.packages = lib.unique (runnerList pkgs ++ timerList pkgs ++ hostList pkgs);
      waymark.harness.python.enable = true;
      waymark.harness.python.packages = ps: [ ps.pytest ];
    }
  );

  # An unknown package: evaluation cannot see its commands until declared.
  unknown = extra: host (
    { pkgs, ... }:
    lib.mkMerge [
      {
        # No table knows it and it has no meta.mainProgram.
        waymark.harness.packages = [
          pkgs.bash
          (pkgs.runCommand "my-test-tools" { } "mkdir -p $out/bin")
        ];
        waymark.harness.mustProvide = lib.mkForce [ "run-integration" ];
      }
      extra
    ]
  );
in
t.all [
  (t.failsWith "the runner's list alone lacks what the timer and the host had" [
    "git-lfs (from pkgs.git-lfs)"
    "script (from pkgs.util-linux)"
    "python3"
    "pytest (from ps.pytest in waymark.harness.python.packages)"
    "python3 (from waymark.harness.python.enable)"
    "jq (from pkgs.jq)"
    "required by waymark.harness.mustProvide"
    "waymark.harness.packages"
  ] onlyRunner)
  (t.failsWith "the timer's list alone lacks what the runner and the host had" [
    "curl"
    "node"
    "wget"
    "jq"
  ] onlyTimer)
  (t.ok "the message does not name what is provided" (
    !(lib.hasInfix "git-lfs" (lib.concatStringsSep "\n" (t.failedAssertions onlyTimer)))
  ))
  (t.clean "one list, the union, provides every command" union)
  (t.ok "the union's env provides each command" (
    lib.all (c: lib.elem c union.waymark.harness.provides) mustProvide
  ))
  (t.failsWith "an unknown package's commands are not assumed" [
    "run-integration"
    "waymark.harness.knownCommands"
  ] (unknown { }))
  (t.clean "knownCommands declares them" (unknown {
    waymark.harness.knownCommands.my-test-tools = [ "run-integration" ];
  }))
  # The build checks the same list against the env's real bin/. (The real
  # buildEnv keeps postBuild as a derivation attribute too; checked only
  # here, where its form is known.)
  (
    if t.contract then
      t.ok "the env's build checks every required command" (
        lib.all (c: lib.hasInfix c union.waymark.harness.env.postBuild) mustProvide
      )
    else
      true
  )
  (t.throws "a command name with a slash is refused" (
    (host { waymark.harness.mustProvide = [ "/bin/sh" ]; }).waymark.harness.mustProvide
  ))
]
