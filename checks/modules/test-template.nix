# The template (`nix flake init -t <waymark>`), instantiated offline: its
# flake's outputs are called with a stand-in nixpkgs whose `lib.nixosSystem`
# is the tests' system evaluator (the contract here, the real `nixosSystem` in
# `nix flake check`), and with this repository as `waymark`.
# Checked: one host with the modules imported and the deploy declaration, the
# flake checks (each host's toplevel, the fleet), and a CI job that runs
# `nix flake check`. The host's toplevel itself needs nixpkgs: that part runs
# in `nix flake check` of this repository (checks.<system>.template-default).
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };
  dir = ../../templates/default;
  flake = import (dir + "/flake.nix");

  stand-in-pkgs = import ./stand-in-pkgs.nix { inherit lib; };
  nixpkgs = {
    lib = lib // {
      nixosSystem =
        { modules, ... }:
        {
          config = t.system modules;
        };
    };
    legacyPackages.x86_64-linux = stand-in-pkgs // {
      writeText = name: text: { inherit name text; };
    };
  };
  waymark = {
    nixosModules.default = ../../modules/default.nix;
    lib = import ../../nix/lib { inherit lib; };
  };
  outputs = flake.outputs {
    self = outputs;
    inherit nixpkgs waymark;
  };

  example = outputs.nixosConfigurations.example.config;
  ciJob = builtins.readFile (dir + "/.github/workflows/check.yml");
  fleetJson = builtins.fromJSON outputs.checks.x86_64-linux.fleet.text;
in
t.all [
  (t.eq "the template's inputs: nixpkgs, and waymark following it" {
    nixpkgs = "github:NixOS/nixpkgs/nixos-26.05";
    waymark = "nixpkgs";
  } {
    nixpkgs = flake.inputs.nixpkgs.url;
    waymark = flake.inputs.waymark.inputs.nixpkgs.follows;
  })
  (t.eq "one host" [ "example" ] (lib.attrNames outputs.nixosConfigurations))
  (t.clean "the host evaluates with the modules imported" example)
  (t.ok "the host is declared deployable" example.waymark.deploy.enable)
  (t.ok "the host has a health check" (example.waymark.deploy.healthChecks != [ ]))
  (t.ok "the host keeps known-good roots" (
    example.systemd.tmpfiles.settings."10-waymark-known-good" ? "/nix/var/nix/gcroots/waymark"
  ))
  (t.eq "the flake checks: the fleet and each host's toplevel" [ "fleet" "host-example" ] (
    lib.attrNames outputs.checks.x86_64-linux
  ))
  (t.eq "the fleet check reads the deploy declaration" "192.0.2.10" fleetJson.hosts.example.targetHost)
  (t.ok "a CI job runs nix flake check" (lib.hasInfix "run: nix flake check" ciJob))
  (t.ok "the CI job runs on pushes" (lib.hasInfix "push:" ciJob))
  (t.eq "the template's files" [ ".github/workflows/check.yml" "flake.nix" "hosts/example/configuration.nix" ] (
    let
      walk =
        d: prefix:
        lib.concatLists (
          lib.mapAttrsToList (
            n: type: if type == "directory" then walk (d + "/${n}") "${prefix}${n}/" else [ "${prefix}${n}" ]
          ) (builtins.readDir d)
        );
    in
    lib.sort lib.lessThan (walk dir "")
  ))
]
