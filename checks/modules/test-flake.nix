# The flake's outputs that need no nixpkgs packages, evaluated with a
# stand-in nixpkgs whose `lib.nixosSystem` is the tests' system evaluator
# (the contract here, the real `nixosSystem` in `nix flake check`): the
# exported modules (each usable on its own), the example hosts as
# nixosConfigurations, and `lib.fleet` over them.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };

  standInSystem =
    { modules, ... }:
    {
      config = t.system modules;
    };

  nixpkgs = {
    lib = lib // {
      nixosSystem = standInSystem;
    };
  };
  flake = import ../../flake.nix;
  outputs = flake.outputs {
    self = outputs;
    inherit nixpkgs;
  };

  alone = module: extra: t.system [ module extra ];
  m = outputs.nixosModules;
in
t.all [
  (t.eq "the exported modules" [
    "converge"
    "default"
    "deploy"
    "harness"
    "known-good"
    "runners"
    "serve"
    "sweeps"
  ] (lib.attrNames m))
  (t.clean "serve alone" (
    alone m.serve (
      { pkgs, ... }:
      {
        services.waymark-serve.enable = true;
        services.waymark-serve.package = pkgs.runCommand "waymark" { meta.mainProgram = "waymark"; } "mkdir -p $out/bin";
      }
    )
  ))
  (t.clean "harness alone" (alone m.harness { waymark.harness.enable = true; }))
  (t.clean "runners alone (they bring the harness)" (
    alone m.runners (
      { pkgs, ... }:
      {
        waymark.harness.enable = true;
        waymark.harness.packages = [ pkgs.bash ];
        waymark.runners.r = {
          kind = "command";
          command = "true";
        };
      }
    )
  ))
  (t.clean "sweeps alone (they bring the harness)" (
    alone m.sweeps (
      { pkgs, ... }:
      {
        waymark.harness.enable = true;
        waymark.harness.packages = [ pkgs.bash ];
        waymark.sweeps.s = {
          command = "true";
          schedule = "daily";
        };
      }
    )
  ))
  (t.clean "known-good alone (it brings deploy)" (alone m.known-good { waymark.knownGood.enable = true; }))
  (t.clean "deploy alone" (alone m.deploy { waymark.deploy.enable = true; }))
  (t.clean "converge alone" (
    alone m.converge (
      { pkgs, ... }:
      {
        services.waymark-converge = {
          enable = true;
          package = pkgs.runCommand "waymark" { } "";
          flake = "/srv/fleet";
        };
      }
    )
  ))
  (t.eq "the example hosts" [ "builder" "ci" ] (lib.attrNames outputs.nixosConfigurations))
  (t.ok "every example host evaluates clean and is deployable" (
    lib.all (c: t.clean "host ${c.config.networking.hostName}" c.config && c.config.waymark.deploy.enable) (
      lib.attrValues outputs.nixosConfigurations
    )
  ))
  (t.eq "lib.fleet over the flake's own hosts" [ [ "builder" ] [ "ci" ] ] (outputs.lib.fleet outputs.nixosConfigurations).waves)
  (t.ok "the template is exported" (builtins.pathExists (outputs.templates.default.path + "/flake.nix")))
]
