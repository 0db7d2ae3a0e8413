# `lib.fleet nixosConfigurations`: the fleet as the deploy tool reads it.
#
# Takes the hosts' `waymark.deploy` declarations (hosts without
# `waymark.deploy.enable` are not part of the fleet) and checks what no single
# host can: each host's `waymark.deploy.name` is its attribute name, build
# hosts and dependencies name fleet hosts, and dependencies have no cycle.
# Returns plain data, which `nix eval --json` prints and `waymark fleet` reads
# (expose it as the flake output `waymark`):
#
#   {
#     hosts.<name> = { toplevel; closure; targetHost; sshUser; buildHost;
#                      allowBuildOnTarget; tags; healthChecks;
#                      activationTimeout; confirmTimeout; tagReleases;
#                      dependsOn; signingKeyFile; bootOnInhibitedSwitch; };
#     settings.deployAll = false;    # `waymark deploy` with no selection
#                                      # deploys every host (lib.fleetWith)
#     waves = [ [ <name> ... ] ... ];  # deploy order: a host comes after
#                                      # every host it depends on; the hosts
#                                      # of one wave are independent.
#   }
#
# `toplevel` is the host's system derivation path and `closure` its output path
# (evaluated, never built), or null where the configuration has none.
#
# Throws, naming the host and the option, when a check fails. Builtins only: it
# evaluates without nixpkgs (`nix-instantiate --eval --strict`), which is how
# it is tested. The `lib` argument is accepted for the flake's `lib` interface.
{
  settings ? { },
  ...
}:
nixosConfigurations:
let
  inherit (builtins)
    all
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    listToAttrs
    map

    ;
  optional = cond: x: if cond then [ x ] else [ ];
  names = filter (n: (nixosConfigurations.${n}.config.waymark.deploy.enable or false)) (
    attrNames nixosConfigurations
  );
  declared = n: nixosConfigurations.${n}.config.waymark.deploy;

  problems = concatLists (
    map (
      host:
      let
        d = declared host;
      in
      optional (d.name != host) "${host}: waymark.deploy.name is \"${d.name}\", not its nixosConfigurations name"
      ++ optional (
        d.buildHost != null && !(elem d.buildHost names)
      ) "${host}: waymark.deploy.buildHost \"${d.buildHost}\" is not a deployable host of the fleet"
      ++ map (dep: "${host}: waymark.deploy.dependsOn names \"${dep}\", not a deployable host of the fleet") (
        filter (dep: !(elem dep names)) d.dependsOn
      )
    ) names
  );

  # Waves by Kahn's algorithm; attrNames is sorted, so the order is stable.
  waves =
    remaining: done:
    let
      ready = filter (n: all (dep: elem dep done) (declared n).dependsOn) remaining;
    in
    if remaining == [ ] then
      [ ]
    else if ready == [ ] then
      throw "lib.fleet: waymark.deploy.dependsOn has a cycle among: ${concatStringsSep ", " remaining}"
    else
      [ ready ] ++ waves (filter (n: !(elem n ready)) remaining) (done ++ ready);

  # Paths only: their string context would make whoever consumes the JSON (a
  # flake check's writeText) build every system.
  systemAttr =
    n: attr:
    let
      value = nixosConfigurations.${n}.config.system.build.toplevel.${attr} or null;
    in
    if value == null then null else builtins.unsafeDiscardStringContext value;

  data =
    n:
    let
      d = declared n;
    in
    {
      toplevel = systemAttr n "drvPath";
      closure = systemAttr n "outPath";
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
        signingKeyFile
        bootOnInhibitedSwitch
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

  knownSettings = [ "deployAll" ];
  unknownSettings = filter (k: !(elem k knownSettings)) (attrNames settings);
in
if unknownSettings != [ ] then
  throw "lib.fleetWith: unknown settings: ${concatStringsSep ", " unknownSettings} (known: ${concatStringsSep ", " knownSettings})"
else if problems != [ ] then
  throw "lib.fleet: the fleet's deploy declarations disagree:\n${concatStringsSep "\n" (map (p: "  - ${p}") problems)}"
else
  {
    hosts = listToAttrs (map (n: { name = n; value = data n; }) names);
    waves = waves names [ ];
    settings.deployAll = settings.deployAll or false;
  }
