# A composed fleet is a fleet: its hosts' modules, evaluated with the
# module system (stubs.nix: Waymark's real waymark.deploy options), give
# lib.fleet exactly the data a hand-written fleet of the same hosts gives,
# and their definitions point at the aspects they come from.
{
  compose,
  t,
  lib,
  ...
}:
let
  waymarkLib = import ../../nix/lib { inherit lib; };

  # nixosSystem, as far as lib.fleet reads it.
  nixosSystem =
    { modules, ... }:
    let
      evaluated = lib.evalModules { modules = [ ./stubs.nix ] ++ modules; };
    in
    {
      inherit (evaluated) config options;
    };

  composed = compose {
    aspects = {
      base = {
        nixos.fleetTest.marks = [ "base" ];
        deploy = {
          tags = [ "all" ];
          healthChecks = [
            {
              name = "sshd";
              command = "systemctl is-active --quiet sshd.service";
            }
          ];
        };
      };
      web = {
        includes = [ "base" "built-remotely" ];
        nixos =
          { config, ... }:
          {
            fleetTest.marks = [ "web-${config.networking.hostName}" ];
          };
        deploy.tags = [ "web" ];
      };
      built-remotely = {
        deploy = {
          buildHost = "builder";
          dependsOn = [ "builder" ];
        };
      };
      builder = {
        includes = [ "base" ];
        deploy.signingKeyFile = "/var/lib/waymark/signing-key.sec";
      };
      region = { region, ... }: { deploy.tags = [ region ]; };
    };
    policies.region =
      { host, ... }:
      {
        context.region = if host.n < 2 then "eu" else "us";
        includes = [ "region" ];
      };
    hosts = {
      builder = {
        system = "x86_64-linux";
        n = 0;
        aspects = [ "builder" ];
        deploy.targetHost = "192.0.2.1";
      };
      web1 = {
        system = "x86_64-linux";
        n = 1;
        aspects = [ "web" ];
        deploy.targetHost = "192.0.2.11";
      };
      web2 = {
        system = "aarch64-linux";
        n = 2;
        aspects = [ "web" ];
        deploy = {
          targetHost = "192.0.2.12";
          confirmTimeout = 120;
        };
      };
    };
  };

  # The same three hosts written by hand.
  sshd = {
    name = "sshd";
    command = "systemctl is-active --quiet sshd.service";
  };
  handWritten = {
    builder = nixosSystem {
      modules = [
        {
          networking.hostName = "builder";
          fleetTest.marks = [ "base" ];
          waymark.deploy = {
            enable = true;
            targetHost = "192.0.2.1";
            tags = [ "all" "eu" ];
            healthChecks = [ sshd ];
            signingKeyFile = "/var/lib/waymark/signing-key.sec";
          };
        }
      ];
    };
    web1 = nixosSystem {
      modules = [
        {
          networking.hostName = "web1";
          waymark.deploy = {
            enable = true;
            targetHost = "192.0.2.11";
            tags = [ "web" "all" "eu" ];
            healthChecks = [ sshd ];
            buildHost = "builder";
            dependsOn = [ "builder" ];
          };
        }
        # The web aspect's module, then base's, as the host lists them.
        { fleetTest.marks = [ "web-web1" ]; }
        { fleetTest.marks = [ "base" ]; }
      ];
    };
    web2 = nixosSystem {
      modules = [
        {
          networking.hostName = "web2";
          waymark.deploy = {
            enable = true;
            targetHost = "192.0.2.12";
            confirmTimeout = 120;
            tags = [ "web" "all" "us" ];
            healthChecks = [ sshd ];
            buildHost = "builder";
            dependsOn = [ "builder" ];
          };
        }
        # The web aspect's module, then base's, as the host lists them.
        { fleetTest.marks = [ "web-web2" ]; }
        { fleetTest.marks = [ "base" ]; }
      ];
    };
  };

  systems = composed.nixosConfigurations { inherit nixosSystem; };
  fleetOf = waymarkLib.fleet;

  conflicting =
    (compose {
      aspects = {
        a.nixos.fleetTest.port = 80;
        b.nixos.fleetTest.port = 8080;
      };
      hosts.x = {
        system = "x86_64-linux";
        aspects = [ "a" "b" ];
      };
    }).nixosConfigurations
      { inherit nixosSystem; };
in
t.all [
  (t.eq "lib.fleet sees the composed fleet as the hand-written one" (fleetOf handWritten) (fleetOf systems))
  (t.eq "the composed fleet's waves: the builder first" [ [ "builder" ] [ "web1" "web2" ] ] (fleetOf systems).waves)
  (t.eq "the hosts' own settings, composed and by hand" (lib.mapAttrs (_: s: s.config.fleetTest.marks) handWritten) (
    lib.mapAttrs (_: s: s.config.fleetTest.marks) systems
  ))
  (t.eq "tags come from the aspects and the policies' context" [ "web" "all" "eu" ] (fleetOf systems).hosts.web1.tags)
  (t.ok "no failed assertion on any composed host" (
    lib.all (s: lib.all (a: a.assertion) s.config.assertions) (lib.attrValues systems)
  ))
  (t.eq "each definition's file is its aspect" [ "aspect base" "aspect web" ] (
    lib.sort lib.lessThan (lib.unique systems.web1.options.fleetTest.marks.files)
  ))
  (t.eq "a conflict between two aspects names both" [ "aspect a" "aspect b" ] (
    lib.sort lib.lessThan (map (d: d.file) conflicting.x.options.fleetTest.port.definitionsWithLocations)
  ))
  (t.throws "and fails the host's evaluation" conflicting.x.config.fleetTest.port)
  (t.eq "the host's name and platform come from the declaration" [ "web2" "aarch64-linux" ] [
    systems.web2.config.networking.hostName
    systems.web2.config.nixpkgs.hostPlatform
  ])
]
