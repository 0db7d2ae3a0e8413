# `nix run .#<name>` runs `waymark <name>`; `default` runs the demo.
{
  self,
  system,
  pkgs,
  ...
}:
let
  inherit (self.packages.${system}) waymark waymark-demo;

  mkApp = package: subcommand: description: {
    type = "app";
    program = "${pkgs.writeShellScript "waymark-${subcommand}" ''
      exec ${package}/bin/waymark ${subcommand} "$@"
    ''}";
    meta = { inherit description; };
  };

  demo = mkApp waymark-demo "demo" "Run the Waymark demo";
in
{
  inherit demo;
  deploy = mkApp waymark "deploy" "Deploy hosts through the gates; only what passed every gate is known-good";
  diff = mkApp waymark "diff" "Show what changes between two NixOS system closures";
  fleet = mkApp waymark "fleet" "Show the fleet's deployable hosts, their declarations and the deploy order";
  known-good = mkApp waymark "known-good" "Manage known-good marks: GC-rooted closures that passed every gate";
  release = mkApp waymark "release" "Manage release tags and fast-forward-only release branches";
  default = demo;
}
