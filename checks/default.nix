# The checks of one system: the workspace tests, clippy and rustfmt, the
# NixOS module tests, an evaluation of every example host and of the
# template's host, and a build of every package and dev shell.
{
  self,
  inputs,
  lib,
  system,
  pkgs,
}:
let
  inherit (self.packages.${system}) waymark;
  fs = lib.fileset;

  # The package's source plus the lint settings its build does not read.
  src = fs.toSource {
    root = ../.;
    fileset = fs.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../crates
      (fs.maybeMissing ../rustfmt.toml)
      (fs.maybeMissing ../clippy.toml)
    ];
  };

  # Runs `command` in the workspace with the package's vendored crates and a
  # writable HOME. Only success counts: the output is an empty file.
  cargoCheck =
    name:
    {
      command,
      nativeBuildInputs ? [ ],
      ...
    }@args:
    pkgs.stdenv.mkDerivation (
      removeAttrs args [ "command" ]
      // {
        name = "waymark-${name}";
        inherit src;
        inherit (waymark) cargoDeps;
        strictDeps = true;
        nativeBuildInputs = [
          pkgs.rustPlatform.cargoSetupHook
          pkgs.cargo
          pkgs.rustc
          pkgs.writableTmpDirAsHomeHook
          pkgs.pkg-config
        ]
        ++ nativeBuildInputs;
        buildInputs = [ pkgs.openssl ];
        dontConfigure = true;
        dontBuild = true;
        doCheck = true;
        checkPhase = ''
          runHook preCheck
          ${command}
          runHook postCheck
        '';
        installPhase = ''
          touch $out
        '';
      }
    );

  # The template's flake, called with this flake's nixpkgs and this flake as
  # its `waymark` input.
  template =
    let
      outputs = (import ../templates/default/flake.nix).outputs {
        self = outputs;
        inherit (inputs) nixpkgs;
        waymark = self;
      };
    in
    outputs;

  # The module tests (checks/modules/test-*.nix). `checks/modules/run.sh`
  # runs them with nothing but nixpkgs' lib, against a declared contract of
  # the NixOS options the modules touch; here they run twice: the same way
  # (with this nixpkgs' lib), and against the real `nixosSystem`, forcing each
  # clean host's toplevel drvPath. Evaluation only: a test that fails throws
  # while the check is evaluated.
  moduleTests = lib.filter (name: lib.hasPrefix "test-" name && lib.hasSuffix ".nix" name) (
    lib.attrNames (builtins.readDir ./modules)
  );
  runModuleTests =
    args:
    pkgs.writeText "waymark-module-tests" (
      lib.concatMapStrings (
        name:
        assert import (./modules + "/${name}") args;
        "${name}\n"
      ) moduleTests
    );
  # A NixOS host of `modules` on the example hardware; the tests add
  # Waymark's modules where they mean to (checks/modules/lib.nix).
  nixosTestSystem =
    modules:
    (inputs.nixpkgs.lib.nixosSystem {
      modules = [
        ../hosts/hardware.nix
        {
          system.stateVersion = lib.mkDefault "26.05";
          # Unit scripts (the sweeps' failure hook) must pass shellcheck.
          systemd.enableStrictShellChecks = true;
          # The drone-exec runner's package is unfree (Polyform Small
          # Business); the tests accept it for themselves only.
          nixpkgs.config.allowUnfreePredicate = pkg: lib.getName pkg == "drone-runner-exec";
        }
      ]
      ++ modules;
    }).config;

  hosts = lib.mapAttrs' (
    name: host:
    lib.nameValuePair "host-${name}" (
      pkgs.writeText "waymark-host-${name}-drv" (
        builtins.unsafeDiscardStringContext host.config.system.build.toplevel.drvPath
      )
    )
  ) self.nixosConfigurations;

  packages = lib.mapAttrs' (name: lib.nameValuePair "package-${name}") (
    removeAttrs self.packages.${system} [ "default" ]
  );
  devShells = lib.mapAttrs' (name: lib.nameValuePair "devShell-${name}") self.devShells.${system};
in
{
  cargo-test = cargoCheck "cargo-test" {
    # The tests build closures in private stores under $TMPDIR with nix and a
    # static busybox as the only builder. busybox is passed by path only: on
    # PATH its applets would shadow the builder's coreutils, sed and tar.
    nativeCheckInputs = [ pkgs.nix ];
    env.WAYMARK_BUSYBOX = "${pkgs.pkgsStatic.busybox}/bin/busybox";
    # Some tests need what the build sandbox does not have, and run in
    # `.ci/run` instead: a real sshd (no /run/sshd, no loopback login), and
    # mount namespaces (a read-only bind mount; simulated hosts with their own
    # /nix: the deploy and fleet-demo tests), which need root.
    command = "cargo test --workspace --frozen -- --skip test_diff_remote::old_side_on_a_remote_host --skip test_known_good::no_permission_to_write_the_roots_directory --skip test_sim_fleet:: --skip test_deploy --skip test_demo::fleet_demo";
  };

  clippy = cargoCheck "clippy" {
    nativeBuildInputs = [ pkgs.clippy ];
    command = "cargo clippy --workspace --all-targets --frozen -- --deny warnings";
  };

  fmt = cargoCheck "fmt" {
    nativeBuildInputs = [ pkgs.rustfmt ];
    command = "cargo fmt --all --check";
  };

  # `nix flake check` does not notice a nixosConfigurations entry that fails
  # to evaluate, so force the example host's toplevel derivation here. This
  # evaluates the host; it does not build it.
  template-default = pkgs.writeText "waymark-template-default-drv" (
    builtins.unsafeDiscardStringContext
      template.nixosConfigurations.example.config.system.build.toplevel.drvPath
  );

  modules-contract = runModuleTests { inherit lib; };

  modules-nixos = runModuleTests {
    inherit lib;
    evalSystem = nixosTestSystem;
    forceConfig = config: builtins.unsafeDiscardStringContext config.system.build.toplevel.drvPath;
  };
}
// hosts
// packages
// devShells
