# `lib.fleet nixosConfigurations`: the fleet as the deploy tool reads it.
#
# Takes the hosts' `waymark.deploy` declarations (hosts without
# `waymark.deploy.enable` are not part of the fleet) and checks what no single
# host can: each host's `waymark.deploy.name` is its attribute name, build
# hosts and dependencies name fleet hosts, and dependencies have no cycle.
# Returns plain data (`nix eval --json` can print it):
#
#   {
#     hosts.<name> = { targetHost; sshUser; buildHost; allowBuildOnTarget;
#                      tags; healthChecks; activationTimeout; confirmTimeout;
#                      tagReleases; dependsOn; };
#     waves = [ [ <name> ... ] ... ];  # deploy order: a host comes after
#                                      # every host it depends on; the hosts
#                                      # of one wave are independent.
#   }
#
# Throws, naming the host and the option, when a check fails.
{ lib }:
nixosConfigurations:
let
  declared = lib.mapAttrs (_: c: c.config.waymark.deploy) nixosConfigurations;
  enabled = lib.filterAttrs (_: d: d.enable) declared;
  names = lib.attrNames enabled;

  problems = lib.concatLists (
    lib.mapAttrsToList (
      host: d:
      lib.optional (d.name != host) "${host}: waymark.deploy.name is \"${d.name}\", not its nixosConfigurations name"
      ++ lib.optional (
        d.buildHost != null && !(lib.elem d.buildHost names)
      ) "${host}: waymark.deploy.buildHost \"${d.buildHost}\" is not a deployable host of the fleet"
      ++ map (dep: "${host}: waymark.deploy.dependsOn names \"${dep}\", not a deployable host of the fleet") (
        lib.filter (dep: !(lib.elem dep names)) d.dependsOn
      )
    ) enabled
  );

  # Waves by Kahn's algorithm; names are sorted, so the order is stable.
  waves =
    remaining: done:
    let
      ready = lib.filter (n: lib.all (dep: lib.elem dep done) enabled.${n}.dependsOn) remaining;
    in
    if remaining == [ ] then
      [ ]
    else if ready == [ ] then
      throw "lib.fleet: waymark.deploy.dependsOn has a cycle among: ${lib.concatStringsSep ", " remaining}"
    else
      [ ready ] ++ waves (lib.subtractLists ready remaining) (done ++ ready);

  data =
    d:
    {
      inherit (d)
        targetHost
        sshUser
        buildHost
        allowBuildOnTarget
        tags
        activationTimeout
        confirmTimeout
        tagReleases
        dependsOn
        ;
      healthChecks = map (c: {
        inherit (c)
          name
          kind
          command
          url
          timeout
          ;
      }) d.healthChecks;
    };
in
if problems != [ ] then
  throw "lib.fleet: the fleet's deploy declarations disagree:\n${lib.concatMapStringsSep "\n" (p: "  - ${p}") problems}"
else
  {
    hosts = lib.mapAttrs (_: data) enabled;
    waves = waves names [ ];
  }
