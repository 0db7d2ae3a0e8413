# `nix fmt`: treefmt with nixfmt (RFC 166) for Nix files and rustfmt, which
# reads rustfmt.toml, for Rust files.
{ pkgs, ... }:
pkgs.nixfmt-tree.override {
  runtimeInputs = [ pkgs.rustfmt ];
  settings.formatter.rustfmt = {
    command = "rustfmt";
    includes = [ "*.rs" ];
  };
}
