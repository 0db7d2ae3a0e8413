# What each runner kind needs from the harness env and from its unit, found
# by reading the upstream sources, with the reason for each entry. A plain
# attrset read by ./runners.nix (not a module); docs/modules.md says the same
# per kind in prose.
#
# Jobs of every kind inherit the runner process's environment, so the unit's
# PATH (the harness env's, forced by ./runners.nix) is the jobs' PATH. What a
# job can still reach outside the env is listed under `outside` and shown in
# the docs; what evaluation can close is closed here.
{ lib }:
let
  hardening = import ./hardening.nix;
in
rec {
  # The revision of nixpkgs that `flake.lock` pinned when the lists below were
  # last checked. checks/modules/test-upstream-pin.nix fails when flake.lock
  # moves away from it: re-read the files named in `upstreamSources`
  # (checks/modules/sync-contract.sh does it for a checkout), update the
  # lists, then set this to the new revision.
  checkedForNixpkgs = "5880666fd9eb563038431edb35c2d0aa595884e6";

  # Where each list was read. The stored copies were not at
  # `checkedForNixpkgs` itself; these are the revisions actually read.
  upstreamSources = {
    gitea-registration = [
      "nixos/modules/services/continuous-integration/gitea-actions-runner.nix @359f8630b84590040ab2916d2740af02a35aaaca (mkdir, cat, sort, rm; TOKEN= environment file)"
      "nixos/modules/services/continuous-integration/gitea-actions-runner.nix, a later master copy (adds grep, sed, tail, sha256sum, cut; raw token file through LoadCredential)"
    ];
    forgejo-runner-wrapper = [
      "pkgs/by-name/fo/forgejo-runner/package.nix, v12 and later (wrapProgram --suffix PATH : gitMinimal)"
    ];
    woodpecker = [
      "nixos/modules/services/continuous-integration/woodpecker/agents.nix @744611273ea2a63ce31e968e88ef2392f32054b5 (the unit's sandbox, the local-backend example)"
      "woodpecker-ci/woodpecker pipeline/backend/local/clone.go @0c282e86e8e9 (LookPath plugin-git, else download; LookPath git; netrc clean-up through /bin/sh -c rm)"
      "woodpecker-ci/woodpecker pipeline/backend/local/local.go @5fb356378efa (steps get os.Environ(); the step image is the shell, looked up on PATH)"
    ];
    drone-exec = [
      "drone-runners/drone-runner-exec engine/compiler/compiler.go @7766db2ba6c1 (clone and steps run as /bin/sh -e <script>; the clone script runs git)"
    ];
  };

  # Commands the upstream gitea-actions registration script (ExecStartPre)
  # runs by name with the unit's PATH, which is the harness env's here: the
  # union over both versions read, so either one registers. Plus bash, the
  # default shell of host jobs' `run:` steps.
  giteaRegistration = [
    "cat"
    "cut"
    "grep"
    "mkdir"
    "rm"
    "sed"
    "sha256sum"
    "sort"
    "tail"
  ];

  # Per kind: the commands the harness env must provide (added to
  # `waymark.harness.requiredCommands`, so evaluation names what is missing),
  # keyed by why.
  requires =
    {
      kind,
      giteaPackage ? null,
    }:
    {
      gitea-actions = {
        "the upstream unit's registration script runs these by name" = giteaRegistration;
        "host jobs' run steps use bash" = [ "bash" ];
      }
      // lib.optionalAttrs (giteaPackage != null && forgejoRunnerWrapsGit giteaPackage) {
        # The wrapper appends gitMinimal to the runner's PATH, which host jobs
        # inherit; with git in the env, the env's git comes first.
        "forgejo-runner ${lib.getVersion giteaPackage} appends its own git to the jobs' PATH, so the env's must come first" = [ "git" ];
      };
      woodpecker = {
        # Without plugin-git on PATH the local backend downloads the latest
        # release from GitHub into the workflow's home and runs that.
        "the local backend's clone step runs plugin-git, downloading one from GitHub when PATH has none, and git" = [
          "plugin-git"
          "git"
        ];
        "the local backend removes the clone's .netrc with rm" = [ "rm" ];
        "a step's image names its shell, found on PATH; bash is upstream's example" = [ "bash" ];
      };
      drone-exec = {
        "drone-runner-exec's clone step runs git" = [ "git" ];
      };
      command = { };
    }
    .${kind};

  # Ways a kind's jobs can still run a command from outside the env, each
  # explained under that name in docs/modules.md (test-runner-docs checks
  # that the docs name every one). `every` applies to all kinds.
  outside = {
    every = [
      "absolute paths"
      "login shells"
      "PATH changes a job makes"
    ];
    gitea-actions = [
      "forgejo-runner's git"
      "JavaScript actions"
      "container labels"
    ];
    woodpecker = [
      "a step's image"
      "the clone's /bin/sh"
    ];
    drone-exec = [ "the steps' /bin/sh" ];
    command = [ "the command's own children" ];
  };

  # forgejo-runner 12 dropped its bundled git and wraps the binary with
  # `--suffix PATH : gitMinimal`.
  forgejoRunnerWrapsGit =
    pkg: lib.getName pkg == "forgejo-runner" && lib.versionAtLeast (lib.getVersion pkg) "12";

  # The sandbox of every runner unit, whatever the kind: Waymark's hardening
  # (./hardening.nix), and these settings off, because test jobs need them
  # off. Upstream's woodpecker unit turns them on, so ./runners.nix forces
  # these values there.
  #
  # - MemoryDenyWriteExecute: JIT runtimes (node, the JVM, LuaJIT, PCRE2's
  #   JIT) need writable-executable memory and abort without it.
  # - PrivateUsers: remaps every other user to nobody, so files in the store
  #   and the workspace show foreign owners, and tests that check ownership or
  #   create user namespaces of their own fail.
  # - SystemCallFilter: a blocked call kills the process with SIGSYS; test
  #   suites use @mount/@privileged/@setuid calls (unshare + mount for
  #   sandboxes, chown in fixtures) and @debug (ptrace: debuggers, sanitizers).
  # - RestrictAddressFamilies: AF_NETLINK is how getifaddrs() lists network
  #   interfaces (node's os.networkInterfaces(), Go's net.Interfaces()).
  #
  # An empty list writes no line, so systemd applies no filter.
  jobNeedsOff = {
    MemoryDenyWriteExecute = false;
    PrivateUsers = false;
    SystemCallFilter = [ ];
    RestrictAddressFamilies = [ ];
  };
  sandbox = hardening // jobNeedsOff;

  # Device groups: PrivateDevices hides /dev, so a group that exists to reach
  # a device does nothing under it. KVM is let through: /dev stays the host's,
  # and the device cgroup admits /dev/kvm, the pseudo-terminals (tests that
  # run under `script` need them) and, through DevicePolicy=closed, /dev/null,
  # zero, full, random and urandom; nothing else. The other device groups are
  # refused.
  kvmDevice = {
    PrivateDevices = false;
    DevicePolicy = "closed";
    DeviceAllow = [
      "/dev/kvm rw"
      "/dev/ptmx rw"
      "/dev/tty rw"
      "char-pts rw"
    ];
  };
  hiddenDeviceGroups = [
    "audio"
    "dialout"
    "disk"
    "input"
    "render"
    "tty"
    "video"
  ];
}
