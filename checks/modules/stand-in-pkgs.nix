# Stand-ins for the few parts of nixpkgs the Waymark modules use, so the module
# tests evaluate without nixpkgs. Each "package" is an attrset that passes
# `lib.types.package` (type = "derivation") with an `outPath` derived from its
# inputs: change an input and the path changes, as with a real derivation.
# Nothing here can be built. The builders keep what they were given (`paths`,
# `postBuild`, `text`) as attributes, as the real ones do, so tests can read
# them.
{ lib }:
let
  mkDrv =
    {
      name,
      pname ? null,
      version ? null,
      meta ? { },
      # Everything that determines the output: hashed into the path.
      inputs ? { },
      attrs ? { },
    }:
    let
      hash = builtins.substring 0 32 (
        builtins.hashString "sha256" (builtins.toJSON { inherit name inputs; })
      );
    in
    {
      type = "derivation";
      inherit name meta;
      outPath = "/nix/store/${hash}-${name}";
      drvPath = "/nix/store/${hash}-${name}.drv";
      outputs = [ "out" ];
      outputName = "out";
    }
    // lib.optionalAttrs (pname != null) { inherit pname version; }
    // attrs;

  mkPkg =
    pname: extra:
    mkDrv (
      {
        inherit pname;
        version = "1.0";
        name = "${pname}-1.0";
      }
      // extra
    );

  main = pname: program: mkPkg pname { meta.mainProgram = program; };

  pythonModules = {
    pytest = main "pytest" "pytest";
    requests = mkPkg "requests" { };
    hypothesis = mkPkg "hypothesis" { };
  };

  bash = main "bash" "bash";
in
rec {
  inherit bash;
  bashInteractive = main "bash-interactive" "bash";
  coreutils = mkPkg "coreutils" { };
  curl = main "curl" "curl";
  findutils = mkPkg "findutils" { };
  gawk = main "gawk" "gawk";
  git = main "git" "git";
  gitMinimal = main "git-minimal" "git";
  git-lfs = main "git-lfs" "git-lfs";
  gnugrep = main "gnugrep" "grep";
  gnumake = main "gnumake" "make";
  gnused = main "gnused" "sed";
  jq = main "jq" "jq";
  nix = main "nix" "nix";
  nodejs = main "nodejs" "node";
  openssh = mkPkg "openssh" { };
  shellcheck = main "shellcheck" "shellcheck";
  systemd = main "systemd" "systemctl";
  util-linux = mkPkg "util-linux" { };
  wget = main "wget" "wget";

  gitea-actions-runner = main "gitea-actions-runner" "act_runner";
  forgejo-runner = main "forgejo-runner" "forgejo-runner";
  woodpecker-agent = main "woodpecker-agent" "woodpecker-agent";
  woodpecker-plugin-git = main "woodpecker-plugin-git" "plugin-git";
  drone-runner-exec = main "drone-runner-exec" "drone-runner-exec";

  python3 = mkPkg "python3" {
    version = "3.13.1";
    name = "python3-3.13.1";
    meta.mainProgram = "python3";
    attrs = {
      pkgs = pythonModules;
      withPackages =
        f:
        mkDrv {
          name = "python3-3.13.1-env";
          inputs = f pythonModules;
        };
    };
  };

  runtimeShell = "${bash}/bin/bash";

  stdenv.hostPlatform.system = "x86_64-linux";

  buildEnv =
    {
      name,
      paths,
      postBuild ? "",
      ...
    }:
    mkDrv {
      inherit name;
      inputs = { inherit paths postBuild; };
      attrs = { inherit paths postBuild; };
    };

  writeShellApplication =
    {
      name,
      text,
      runtimeInputs ? [ ],
      ...
    }:
    let
      # Like the real one: a shebang, the bash options, then PATH only when
      # runtimeInputs is not empty.
      fullText = ''
        #!${runtimeShell}
        set -o errexit
        set -o nounset
        set -o pipefail
      ''
      + lib.optionalString (runtimeInputs != [ ]) ''
        export PATH="${lib.makeBinPath runtimeInputs}:$PATH"
      ''
      + text;
    in
    mkDrv {
      inherit name;
      meta.mainProgram = name;
      inputs = fullText;
      attrs.text = fullText;
    };

  runCommand =
    name: env: script:
    mkDrv {
      inherit name;
      inputs = { inherit env script; };
    };

  writeShellScript =
    name: text:
    mkDrv {
      inherit name;
      inputs = text;
      attrs.text = text;
    };

  writeShellScriptBin =
    name: text:
    mkDrv {
      inherit name;
      inputs = text;
      attrs.text = text;
    };
}
