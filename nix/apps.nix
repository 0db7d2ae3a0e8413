# `nix run .#<name>` runs `waymark <name>`; `default` runs the demo.
# `deploy`, `known-good` and `release` join once the CLI has those
# subcommands: an app for a missing subcommand would only fail.
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
  default = demo;
}
