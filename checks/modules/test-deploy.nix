# The deploy declaration (waymark.deploy) and `lib.fleet`, which reads it from
# every host: typed options with their defaults, assertions for a single
# host, and the fleet-wide checks (names, build hosts, dependencies, cycles).
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };
  inherit (import ../../nix/lib { inherit lib; }) fleet fleetWith;

  host =
    name: extra:
    t.eval [
      {
        networking.hostName = name;
        waymark.deploy.enable = true;
      }
      extra
    ];
  # What nixosSystem returns, as far as lib.fleet reads it.
  system = name: extra: { config = host name extra; };

  plain = (host "web" { }).waymark.deploy;

  examples = {
    ci = { config = t.eval [ ../../hosts/ci/configuration.nix ]; };
    builder = { config = t.eval [ ../../hosts/builder/configuration.nix ]; };
  };
in
t.all [
  (t.eq "defaults" {
    name = "web";
    targetHost = "web";
    sshUser = "root";
    buildHost = null;
    allowBuildOnTarget = false;
    tags = [ ];
    healthChecks = [ ];
    activationTimeout = 300;
    confirmTimeout = 60;
    tagReleases = false;
    dependsOn = [ ];
    signingKeyFile = null;
    trustedBuilderKeys = [ ];
    bootOnInhibitedSwitch = false;
  } (removeAttrs plain [ "enable" ]))
  (t.eq "builder keys become trusted public keys" [ "builder-1:7pA2lk0Xq0Av8LdjB9CsF5nHUlkAwgWxr1hvfZ6Umh4=" ] (
    host "web" { waymark.deploy.trustedBuilderKeys = [ "builder-1:7pA2lk0Xq0Av8LdjB9CsF5nHUlkAwgWxr1hvfZ6Umh4=" ]; }
  ).nix.settings.extra-trusted-public-keys)
  (t.throws "a builder key without its name is a type error" (host "web" { waymark.deploy.trustedBuilderKeys = [ "7pA2lk0Xq0Av8LdjB9CsF5nHUlkAwgWxr1hvfZ6Umh4=" ]; }).waymark.deploy.trustedBuilderKeys)
  (t.throws "a relative signing key path is a type error" (host "web" { waymark.deploy.signingKeyFile = "keys/signing.sec"; }).waymark.deploy.signingKeyFile)
  (t.clean "a host with checks of both kinds evaluates" (host "web" {
    waymark.deploy.healthChecks = [
      {
        name = "nginx";
        command = "systemctl is-active --quiet nginx.service";
      }
      {
        name = "http";
        url = "http://localhost/healthz";
      }
    ];
  }))
  (t.eq "a check's kind follows from what it has" [ "command" "http" ] (
    map (c: c.kind) (host "web" {
      waymark.deploy.healthChecks = [
        {
          name = "a";
          command = "true";
        }
        {
          name = "b";
          url = "https://example.com/";
        }
      ];
    }).waymark.deploy.healthChecks
  ))
  (t.failsWith "a check with both command and url" [ "exactly one of command and url" "both" ] (host "web" {
    waymark.deploy.healthChecks = [
      {
        name = "both";
        command = "true";
        url = "http://localhost/";
      }
    ];
  }))
  (t.failsWith "duplicate check names" [ "duplicate names: a" ] (host "web" {
    waymark.deploy.healthChecks = [
      {
        name = "a";
        command = "true";
      }
      {
        name = "a";
        command = "false";
      }
    ];
  }))
  (t.failsWith "a host depending on itself" [ "web cannot depend on itself" ] (host "web" { waymark.deploy.dependsOn = [ "web" ]; }))
  (t.failsWith "a host building on itself by name" [ "names the host itself" ] (host "web" { waymark.deploy.buildHost = "web"; }))
  (t.throws "a zero timeout is a type error" (host "web" { waymark.deploy.confirmTimeout = 0; }).waymark.deploy.confirmTimeout)
  (t.throws "a tag with a space is a type error" (host "web" { waymark.deploy.tags = [ "eu west" ]; }).waymark.deploy.tags)
  (t.throws "a URL check must be http(s)" (
    (host "web" {
      waymark.deploy.healthChecks = [
        {
          name = "x";
          url = "ftp://example.com";
        }
      ];
    }).waymark.deploy.healthChecks
  ))

  # lib.fleet over the example hosts.
  (t.eq "the example fleet: builder first, then ci" [ [ "builder" ] [ "ci" ] ] (fleet examples).waves)
  (t.eq "the example CI host builds on builder" "builder" (fleet examples).hosts.ci.buildHost)
  (t.ok "lib.fleet's result is plain data" (builtins.isString (builtins.toJSON (fleet examples))))
  (t.eq "deploying every host at once is off unless the fleet says so" [ false true ] [
    (fleet examples).settings.deployAll
    (fleetWith { deployAll = true; } examples).settings.deployAll
  ])
  (t.throws "an unknown fleet setting" (fleetWith { deployEverything = true; } examples))
  (t.eq "hosts without waymark.deploy are not in the fleet" [ "a" ] (
    lib.attrNames (fleet {
      a = system "a" { };
      b = { config = t.eval [ { networking.hostName = "b"; } ]; };
    }).hosts
  ))
  (t.eq "independent hosts share a wave" [ [ "a" "b" ] [ "c" ] ] (
    (fleet {
      a = system "a" { };
      b = system "b" { };
      c = system "c" { waymark.deploy.dependsOn = [ "a" "b" ]; };
    }).waves
  ))
  (t.throws "an unknown build host" (fleet { a = system "a" { waymark.deploy.buildHost = "nowhere"; }; }))
  (t.throws "an unknown dependency" (fleet { a = system "a" { waymark.deploy.dependsOn = [ "nowhere" ]; }; }))
  (t.throws "a name that differs from the attribute" (fleet { a = system "b" { }; }))
  (t.throws "a dependency cycle" (
    fleet {
      a = system "a" { waymark.deploy.dependsOn = [ "b" ]; };
      b = system "b" { waymark.deploy.dependsOn = [ "a" ]; };
    }
  ))
]
