# The output: per host the modules for nixosSystem (each aspect's part with
# its name as key and file, in a fixed order), the users' home-manager
# modules, the deploy declaration (tags from aspects), and
# nixosConfigurations.
{ compose, t, ... }:
let
  mark = n: { nixos.marks = [ n ]; };
  decl = {
    aspects = {
      base = mark "base" // {
        deploy = {
          tags = [ "base" ];
          healthChecks = [
            {
              name = "sshd";
              command = "systemctl is-active --quiet sshd.service";
            }
          ];
        };
        homeManager.base = true;
      };
      web = mark "web" // {
        includes = [ "base" ];
        deploy = {
          tags = [ "web" "base" ];
          confirmTimeout = 120;
        };
      };
      dev = { user, ... }: { homeManager.dev = user.name; };
    };
    hosts = {
      web1 = {
        system = "x86_64-linux";
        aspects = [ "web" ];
        users = {
          zoe.aspects = [ "dev" ];
          amy.aspects = [ "dev" ];
        };
        deploy = {
          targetHost = "192.0.2.1";
          tags = [ "eu" ];
        };
      };
      db1 = {
        system = "aarch64-linux";
        aspects = [ "base" ];
        deploy.confirmTimeout = 30;
      };
    };
  };
  out = compose decl;
  web1 = out.hosts.web1;

  # The host's own module, called with just enough of lib to read it.
  hostConfig =
    host:
    (builtins.head host.modules {
      lib.mkDefault = v: { default = v; };
    }).config;
in
t.all [
  (t.eq "the hosts" [ "db1" "web1" ] (builtins.attrNames out.hosts))
  (t.eq "the system" "aarch64-linux" out.hosts.db1.system)
  (t.eq "aspects in walk order, users by name" [ "web" "base" "dev@amy" "dev@zoe" ] web1.aspects)
  (t.eq "the same declarations give the same modules" (map (m: m.key or null) web1.modules) (
    map (m: m.key or null) (compose decl).hosts.web1.modules
  ))
  (t.eq "each module is its aspect's part, keyed and filed by the aspect's name" [
    {
      key = "waymark-compose:web";
      _file = "aspect web";
      part.marks = [ "web" ];
    }
    {
      key = "waymark-compose:base";
      _file = "aspect base";
      part.marks = [ "base" ];
    }
  ] (t.parts web1))
  (t.eq "the host's own module: its name, platform and deploy declaration" {
    networking.hostName.default = "web1";
    nixpkgs.hostPlatform.default = "x86_64-linux";
    waymark.deploy = web1.deploy;
  } (hostConfig web1))
  (t.eq "the host's module has a key of its own" "waymark-compose:host web1" (
    (builtins.head web1.modules { lib.mkDefault = v: v; }).key
  ))
  (t.eq "deploy: the host's settings and the aspects' parts, tags once each" {
    enable = true;
    name = "web1";
    targetHost = "192.0.2.1";
    tags = [ "eu" "web" "base" ];
    confirmTimeout = 120;
    healthChecks = [
      {
        name = "sshd";
        command = "systemctl is-active --quiet sshd.service";
      }
    ];
  } web1.deploy)
  (t.eq "the host's own setting wins over its aspects'" 30 out.hosts.db1.deploy.confirmTimeout)
  (t.eq "a host may opt out of the fleet" false (
    (compose {
      hosts.x = {
        system = "x86_64-linux";
        deploy.enable = false;
      };
    }).hosts.x.deploy.enable
  ))
  (t.eq "each user's home: the host's home parts, then the user's" {
    amy = [ { base = true; } { dev = "amy"; } ];
    zoe = [ { base = true; } { dev = "zoe"; } ];
  } (builtins.mapAttrs (_: map (m: builtins.head m.imports)) web1.home))
  (t.eq "home modules are keyed too" [ "waymark-compose:base" "waymark-compose:dev@amy" ] (
    map (m: m.key) web1.home.amy
  ))
  (t.eq "homeManager = true wires the homes into the host" [ "amy" "zoe" ] (
    builtins.attrNames
      (hostConfig
        (compose (
          decl
          // {
            hosts.web1 = decl.hosts.web1 // {
              homeManager = true;
            };
          }
        )).hosts.web1
      ).home-manager.users
  ))
  (t.ok "without it the host's module leaves home-manager alone" (!(hostConfig web1 ? home-manager)))
  (t.eq "nixosConfigurations calls nixosSystem per host with the extra modules first" {
    db1 = 3;
    web1 = 4;
  } (
    out.nixosConfigurations {
      nixosSystem = { modules, specialArgs }: builtins.length modules + specialArgs.offset;
      modules = [ "waymark" ];
      specialArgs.offset = 0;
    }
  ))
  (t.eq "no declarations, no hosts" { } (compose { }).hosts)
]
