# The `waymark` CLI, built from the Cargo workspace at the repository root.
{
  lib,
  rustPlatform,
  makeWrapper,
  pkg-config,
  openssl,
  nix,
  git,
  pkgsStatic,
  # `waymark demo` and the test lab it stands on; the installed program goes without.
  withDemo ? false,
}:
let
  fs = lib.fileset;
  cargoToml = lib.importTOML ../Cargo.toml;

  runtimePath = lib.makeBinPath [
    nix
    git
  ];
in
rustPlatform.buildRustPackage {
  pname = if withDemo then "waymark-demo" else "waymark";
  inherit (cargoToml.workspace.package) version;

  # Only the files cargo reads, so edits to Nix files, docs or CI scripts do
  # not rebuild the package.
  src = fs.toSource {
    root = ../.;
    fileset = fs.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../crates
    ];
  };

  cargoLock.lockFile = ../Cargo.lock;

  # Build and install the CLI only: the `waymark-testbed` binary is test
  # support and does not belong on a user's PATH.
  cargoBuildFlags = [
    "--package"
    "waymark"
  ];
  # Without the cargo feature `demo` the binary links no test lab (the crate's default
  # has it, for `cargo run -p waymark -- demo` in a checkout); fault injection is a
  # test-only feature either way.
  buildNoDefaultFeatures = !withDemo;

  strictDeps = true;
  # git2 (release tags and pushes over ssh/https) links openssl; libgit2 itself is
  # vendored by the crate.
  nativeBuildInputs = [
    makeWrapper
    pkg-config
  ];
  buildInputs = [ openssl ];

  # The tests need nix and a static busybox in the sandbox; they run in
  # `checks.<system>.cargo-test`, so building the package only builds.
  doCheck = false;

  # waymark runs nix (nix-store, nix copy, ...) and git. They are appended,
  # not prepended: the user's own nix, the one that matches their daemon and
  # store schema, must win; ours only fills in where there is none.
  # `waymark demo` builds its closures with a static busybox; a user's own
  # WAYMARK_BUSYBOX still wins.
  postInstall = ''
    wrapProgram $out/bin/waymark \
      --suffix PATH : ${runtimePath} ${lib.optionalString withDemo "--set-default WAYMARK_BUSYBOX ${pkgsStatic.busybox}/bin/busybox"}
  '';

  meta = {
    description = "Deploy NixOS fleets through gates";
    homepage = "https://github.com/waymark-nix/waymark";
    license = lib.licenses.mit;
    mainProgram = "waymark";
    platforms = lib.platforms.linux;
  };
}
