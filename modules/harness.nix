# waymark.harness: the one declaration of what CI tests need at run time.
#
# A CI host runs the same tests from a runner (for pushes) and from sweep
# timers. When each of them lists its own dependencies the lists drift: one
# path has git-lfs or bash, the other does not, and tests fail only from the
# timer. This module is the only place in Waymark that lists them. From it
# come one env (one store path) and one entrypoint, `harness-run`, which runs a
# command with exactly that env on PATH and the declared variables exported.
# The runners (./runners.nix), the sweeps (./sweeps.nix) and the host's
# system packages all take `env`, `entrypoint` and `exports` from here, and
# `checks/modules/test-no-second-list.nix` fails when any other file in the
# repository declares a dependency list of its own.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.waymark.harness;

  # Commands that common packages put in bin/, keyed by `lib.getName`. The
  # evaluation-time `mustProvide` check reads this table (plus
  # `knownCommands` and each package's `meta.mainProgram`) because it cannot
  # look inside a package without building it. The env's build repeats the
  # check against the real bin/ directory, so a wrong entry here fails the
  # build instead of passing silently.
  builtinCommands =
    let
      coreutils = [
        "["
        "base64"
        "basename"
        "cat"
        "chmod"
        "chown"
        "comm"
        "cp"
        "cut"
        "date"
        "dd"
        "df"
        "dirname"
        "du"
        "echo"
        "env"
        "expr"
        "false"
        "head"
        "id"
        "install"
        "ln"
        "ls"
        "md5sum"
        "mkdir"
        "mktemp"
        "mv"
        "nproc"
        "od"
        "printf"
        "pwd"
        "readlink"
        "realpath"
        "rm"
        "rmdir"
        "seq"
        "sha1sum"
        "sha256sum"
        "sleep"
        "sort"
        "split"
        "stat"
        "sync"
        "tac"
        "tail"
        "tee"
        "test"
        "timeout"
        "touch"
        "tr"
        "true"
        "uname"
        "uniq"
        "wc"
        "whoami"
        "yes"
      ];
      bash = [
        "bash"
        "sh"
      ];
      git = [
        "git"
        "git-receive-pack"
        "git-upload-pack"
      ];
      nix = [
        "nix"
        "nix-build"
        "nix-env"
        "nix-instantiate"
        "nix-shell"
        "nix-store"
      ];
    in
    {
      inherit bash coreutils git nix;
      bash-interactive = bash;
      coreutils-full = coreutils;
      git-minimal = git;
      curl = [ "curl" ];
      diffutils = [
        "cmp"
        "diff"
      ];
      findutils = [
        "find"
        "xargs"
      ];
      gawk = [
        "awk"
        "gawk"
      ];
      git-lfs = [ "git-lfs" ];
      gnugrep = [
        "egrep"
        "fgrep"
        "grep"
      ];
      gnumake = [ "make" ];
      gnused = [ "sed" ];
      gnutar = [ "tar" ];
      gzip = [
        "gunzip"
        "gzip"
        "zcat"
      ];
      jq = [ "jq" ];
      nodejs = [
        "node"
        "npm"
        "npx"
      ];
      openssh = [
        "scp"
        "ssh"
        "ssh-keygen"
      ];
      procps = [
        "free"
        "pgrep"
        "pkill"
        "ps"
      ];
      pytest = [ "pytest" ];
      rsync = [ "rsync" ];
      # `script` (run a command under a pseudo-terminal) is a common hidden
      # dependency of test suites that need a tty.
      util-linux = [
        "flock"
        "getopt"
        "script"
        "setsid"
      ];
      wget = [ "wget" ];
      which = [ "which" ];
      # The clone step of woodpecker's local backend looks it up by this name.
      woodpecker-plugin-git = [ "plugin-git" ];
      xz = [
        "unxz"
        "xz"
        "xzcat"
      ];
    };

  commandTable = builtinCommands // cfg.knownCommands;

  # The commands a package is known to provide: the table's entry for its name
  # plus its `meta.mainProgram`.
  commandsOf =
    pkg:
    commandTable.${lib.getName pkg} or [ ]
    ++ lib.optional ((pkg.meta.mainProgram or null) != null) pkg.meta.mainProgram;

  pythonPackages = cfg.python.packages cfg.python.package.pkgs;
  pythonEnv = cfg.python.package.withPackages cfg.python.packages;

  # Commands the env provides, as far as evaluation can tell.
  provided = lib.unique (
    lib.concatMap commandsOf cfg.packages
    ++ lib.optionals cfg.python.enable (
      [
        "python"
        "python3"
      ]
      ++ lib.concatMap commandsOf pythonPackages
    )
  );

  # Who requires which commands: `mustProvide`, plus what other Waymark
  # modules add to `requiredCommands` (e.g. a runner whose upstream scripts
  # run with the harness PATH).
  requirements = {
    "waymark.harness.mustProvide" = cfg.mustProvide;
  }
  // cfg.requiredCommands;
  allRequired = lib.unique (lib.concatLists (lib.attrValues requirements));

  missingFor = lib.mapAttrs (_: lib.filter (c: !(lib.elem c provided))) requirements;
  missing = lib.filterAttrs (_: cmds: cmds != [ ]) missingFor;

  # For a missing command, the table's packages that would provide it.
  providersOf =
    cmd: lib.attrNames (lib.filterAttrs (_: cmds: lib.elem cmd cmds) commandTable);
  # Table entries that are Python modules, suggested as such.
  pythonModules = [ "pytest" ];
  describeProvider =
    p: if lib.elem p pythonModules then "ps.${p} in waymark.harness.python.packages" else "pkgs.${p}";
  describeMissing =
    cmd:
    let
      providers = providersOf cmd;
    in
    if lib.elem cmd [
      "python"
      "python3"
    ] then
      "${cmd} (from waymark.harness.python.enable)"
    else if providers == [ ] then
      cmd
    else
      "${cmd} (from ${lib.concatMapStringsSep " or " describeProvider providers})";

  missingMessage = ''
    waymark.harness: the harness env does not provide commands that are required of it:
    ${lib.concatStringsSep "\n" (
      lib.mapAttrsToList (
        who: cmds: "  - required by ${who}: ${lib.concatMapStringsSep ", " describeMissing cmds}"
      ) missing
    )}
    Add the packages to waymark.harness.packages (the only dependency list). If a
    package already there does provide a command, declare it in
    waymark.harness.knownCommands."<package name>" so evaluation can see it.'';

  env = pkgs.buildEnv {
    name = "waymark-harness-env";
    paths = cfg.contents;
    # The same requirement as the evaluation-time assertion, against the real
    # bin/ directory: it catches a wrong `knownCommands` entry.
    postBuild = ''
      missing=""
      for cmd in ${lib.escapeShellArgs allRequired}; do
        [ -x "$out/bin/$cmd" ] || missing="$missing $cmd"
      done
      if [ -n "$missing" ]; then
        echo "waymark-harness-env: required commands missing from bin/:$missing" >&2
        exit 1
      fi
    '';
  };

  exportLines = lib.concatStringsSep "\n" (
    lib.mapAttrsToList (name: value: "export ${name}=${lib.escapeShellArg value}") cfg.exports
  );

  entrypoint = pkgs.writeShellApplication {
    name = "harness-run";
    text = ''
      # Runs a command with exactly the Waymark harness env: PATH is replaced,
      # not extended, so the runners, the sweeps and a shell on the host see
      # the same commands.
      if [ "$#" -eq 0 ]; then
        echo "usage: harness-run COMMAND [ARGUMENT...]" >&2
        echo "Runs COMMAND with PATH=${cfg.exports.PATH} and the harness variables." >&2
        exit 2
      fi
      ${exportLines}
      exec "$@"
    '';
  };

  # Variables the harness must not set: PATH comes from `packages`; the
  # others belong to the unit or the login that runs the command.
  reservedVariables = [
    "PATH"
    "HOME"
    "USER"
    "LOGNAME"
    "SHELL"
  ];
  badNames = lib.filter (n: builtins.match "[A-Za-z_][A-Za-z0-9_]*" n == null) (
    lib.attrNames cfg.environment
  );
  reservedSet = lib.filter (n: lib.elem n reservedVariables) (lib.attrNames cfg.environment);
in
{
  options.waymark.harness = {
    enable = lib.mkEnableOption "the Waymark test harness env, shared by runners, sweeps and the host";

    packages = lib.mkOption {
      type = lib.types.listOf lib.types.package;
      default = [ ];
      example = lib.literalExpression "with pkgs; [ bash coreutils gitMinimal git-lfs util-linux ]";
      description = ''
        Packages the tests need at run time. This is the only dependency list:
        the runners ({option}`waymark.runners`), the sweeps
        ({option}`waymark.sweeps`) and, with
        {option}`waymark.harness.installOnHost`, the host all get the env built
        from it, so adding a package here reaches every one of them.

        `harness-run` replaces PATH with the env's, so the list must hold even
        basic tools such as `bash` and `coreutils`.
      '';
    };

    python = {
      enable = lib.mkEnableOption "a Python environment in the harness env";

      package = lib.mkPackageOption pkgs "python3" { };

      packages = lib.mkOption {
        type = lib.types.functionTo (lib.types.listOf lib.types.package);
        default = _: [ ];
        defaultText = lib.literalExpression "ps: [ ]";
        example = lib.literalExpression "ps: [ ps.pytest ps.requests ]";
        description = ''
          Python modules of the Python environment, chosen from the Python
          package set given as the argument. The environment
          (`python.package.withPackages python.packages`) is part of the
          harness env.
        '';
      };
    };

    environment = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      default = { };
      example = {
        LANG = "C.UTF-8";
        PYTHONDONTWRITEBYTECODE = "1";
      };
      description = ''
        Environment variables of the harness. `harness-run` exports them, and
        the runner units get them too. PATH, HOME, USER, LOGNAME and SHELL
        are not allowed: PATH comes from {option}`waymark.harness.packages`,
        the others from the unit that runs the command.
      '';
    };

    mustProvide = lib.mkOption {
      type = lib.types.listOf (lib.types.strMatching "[^/[:space:]]+");
      default = [ ];
      example = [
        "bash"
        "git"
        "git-lfs"
        "script"
      ];
      description = ''
        Commands that must resolve in the harness env. Evaluation fails,
        naming each missing command and the packages that would provide it,
        when the env does not provide them; the env's build checks them again
        against its real `bin/`.

        A migration aid: when replacing a runner's, a timer's and the host's
        separate lists with {option}`waymark.harness.packages`, list here every
        command any of the old lists provided.
      '';
    };

    knownCommands = lib.mkOption {
      type = lib.types.attrsOf (lib.types.listOf lib.types.str);
      default = { };
      example = {
        my-test-tools = [
          "run-integration"
          "fixture-server"
        ];
      };
      description = ''
        Commands that packages provide, by package name (`lib.getName`), in
        addition to Waymark's built-in table and each package's
        `meta.mainProgram`. Evaluation cannot look inside a package, so the
        {option}`waymark.harness.mustProvide` check only sees commands
        declared this way.
      '';
    };

    requiredCommands = lib.mkOption {
      type = lib.types.attrsOf (lib.types.listOf lib.types.str);
      default = { };
      internal = true;
      description = ''
        Commands that other Waymark modules require of the env, keyed by the
        option that requires them (shown in the error message).
      '';
    };

    installOnHost = lib.mkEnableOption ''
      putting the harness env and `harness-run` on
      {option}`environment.systemPackages`, so a shell on the host sees the
      same commands as the runners and sweeps'';

    contents = lib.mkOption {
      type = lib.types.listOf lib.types.package;
      readOnly = true;
      description = "What the harness env is built from: the packages and the Python environment.";
    };

    env = lib.mkOption {
      type = lib.types.package;
      readOnly = true;
      description = "The harness env: one store path with every package's `bin/`.";
    };

    entrypoint = lib.mkOption {
      type = lib.types.package;
      readOnly = true;
      description = ''
        `harness-run`: runs a command with exactly the harness env on PATH and
        the harness variables exported. Sweeps and runners start through it.
      '';
    };

    exports = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      readOnly = true;
      description = ''
        The variables `harness-run` exports: PATH (the env's `bin` and `sbin`)
        and {option}`waymark.harness.environment`. Runner units whose command
        upstream starts get the same set as their environment.
      '';
    };

    provides = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      readOnly = true;
      description = "The commands the env provides, as far as evaluation can tell.";
    };
  };

  config = lib.mkMerge [
    {
      # Defined even when the harness is disabled, so the consumers' assertions
      # can be evaluated and name the missing `enable`.
      waymark.harness = {
        contents = cfg.packages ++ lib.optional cfg.python.enable pythonEnv;
        inherit env entrypoint;
        provides = provided;
        exports = {
          PATH = "${env}/bin:${env}/sbin";
        }
        // cfg.environment;
      };
    }
    (lib.mkIf cfg.enable {
      assertions = [
        {
          assertion = missing == { };
          message = missingMessage;
        }
        {
          assertion = badNames == [ ];
          message = "waymark.harness.environment: not a variable name: ${lib.concatStringsSep ", " badNames}";
        }
        {
          assertion = reservedSet == [ ];
          message = "waymark.harness.environment must not set ${lib.concatStringsSep ", " reservedSet}: PATH comes from waymark.harness.packages, the others from the unit that runs the command.";
        }
      ];

      warnings = lib.optional (cfg.contents == [ ]) ''
        waymark.harness is enabled with no packages: harness-run replaces PATH, so
        commands run through it find nothing but what they name by absolute path.'';

      environment.systemPackages = lib.mkIf cfg.installOnHost [
        cfg.env
        cfg.entrypoint
      ];
    })
  ];
}
