# The aspects template (`nix flake init -t <waymark>#aspects`), instantiated
# offline: its flake's outputs are called with a stand-in nixpkgs whose
# nixosSystem evaluates the hosts' modules with the module system and
# stubs.nix (Waymark's real waymark.deploy), and with this repository's
# lib as `waymark`. Checked: the composed hosts, the fleet `waymark fleet`
# reads (addresses, tags from aspects and policies, build host, waves), the
# flake checks, and the template's files.
{
  compose,
  t,
  lib,
  ...
}:
let
  dir = ../../templates/aspects;
  flake = import (dir + "/flake.nix");

  # What the template's aspects set beyond stubs.nix: accepted unchecked.
  accepted = lib.mkOption {
    type = lib.types.anything;
    default = { };
    description = "Accepted, not checked (checks/compose/test-template.nix).";
  };
  templateStubs = {
    options = {
      services = accepted;
      boot = accepted;
      fileSystems = accepted;
      users = accepted;
      system = accepted;
      networking.firewall = accepted;
      waymark.knownGood = accepted;
    };
  };

  nixpkgs = {
    lib = lib // {
      nixosSystem =
        { modules, ... }:
        {
          config =
            (lib.evalModules {
              modules = [
                ./stubs.nix
                templateStubs
              ]
              ++ modules;
            }).config;
        };
    };
    legacyPackages.x86_64-linux.writeText = name: text: { inherit name text; };
  };
  waymark = {
    nixosModules.default = { };
    # The engine under test stands in for the flake's lib.compose.
    lib = import ../../nix/lib { inherit lib; } // {
      inherit compose;
    };
  };
  outputs = flake.outputs {
    self = outputs;
    inherit nixpkgs waymark;
  };
  fleet = outputs.waymark;
  fleetJson = builtins.fromJSON outputs.checks.x86_64-linux.fleet.text;
in
t.all [
  (t.eq "three hosts" [ "builder" "web1" "web2" ] (lib.attrNames outputs.nixosConfigurations))
  (t.eq "a web host's aspects, in order" [
    "web"
    "base"
    "hardware"
    "built-remotely"
    "site"
    "operator@ops"
  ] outputs.composed.hosts.web1.aspects)
  (t.eq "the fleet's hosts and addresses" {
    builder = "192.0.2.10";
    web1 = "192.0.2.11";
    web2 = "192.0.2.12";
  } (lib.mapAttrs (_: h: h.targetHost) fleet.hosts))
  (t.eq "tags from the aspects and the site policy" {
    builder = [ "builder" "site-eu" ];
    web1 = [ "web" "site-eu" ];
    web2 = [ "web" "site-us" ];
  } (lib.mapAttrs (_: h: h.tags) fleet.hosts))
  (t.eq "health checks from base and web" [ "nginx" "sshd" ] (map (c: c.name) fleet.hosts.web2.healthChecks))
  (t.eq "the web hosts build on the builder, deployed after it" [ [ "builder" ] [ "web1" "web2" ] ] fleet.waves)
  (t.eq "the builder signs" "/var/lib/waymark/signing-key.sec" fleet.hosts.builder.signingKeyFile)
  (t.eq "the operator is a user of web1 only" [ true false ] [
    (outputs.nixosConfigurations.web1.config.users.users ? ops)
    (outputs.nixosConfigurations.web2.config.users ? users)
  ])
  (t.eq "the fleet check is the fleet's JSON" fleet fleetJson)
  (t.eq "the flake checks: the fleet and each host's toplevel" [ "fleet" "host-builder" "host-web1" "host-web2" ] (
    lib.attrNames outputs.checks.x86_64-linux
  ))
  (t.eq "the template's files" [
    ".github/workflows/check.yml"
    "flake.nix"
    "fleet/aspects.nix"
    "fleet/hosts.nix"
    "fleet/policies.nix"
  ] (
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
