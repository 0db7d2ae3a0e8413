# `nix run .#<name>` runs `waymark <name>`; `default` runs the demo.
# `deploy` joins once the CLI has that subcommand: an app for a missing
# subcommand would only fail.
{
  self,
  system,
  pkgs,
  ...
}:
let
  inherit (self.packages.${system}) waymark;

  mkApp = subcommand: description: {
    type = "app";
    program = "${pkgs.writeShellScript "waymark-${subcommand}" ''
      exec ${waymark}/bin/waymark ${subcommand} "$@"
    ''}";
    meta = { inherit description; };
  };

  demo = mkApp "demo" "Run the Waymark demo";
in
{
  inherit demo;
  diff = mkApp "diff" "Show what changes between two NixOS system closures";
  known-good = mkApp "known-good" "Manage known-good marks: GC-rooted closures that passed every gate";
  release = mkApp "release" "Manage release tags and fast-forward-only release branches";
  default = demo;
}
