# `nix develop`: the Rust toolchain, nix and sqlite, with the static busybox
# that the tests use as their only builder.
{ pkgs, ... }:
{
  default = pkgs.mkShell {
    packages = [
      pkgs.cargo
      pkgs.rustc
      pkgs.clippy
      pkgs.rustfmt
      pkgs.nix
      pkgs.sqlite
    ];

    # busybox is reached through this variable only, not put in `packages`:
    # its applets (ls, grep, sed, ps, vi, ...) would shadow the usual tools
    # in the shell.
    env.WAYMARK_BUSYBOX = "${pkgs.pkgsStatic.busybox}/bin/busybox";
  };
}
