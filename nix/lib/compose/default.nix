# `lib.compose { hosts; aspects; policies; }`: a fleet written as hosts and
# reusable aspects, resolved to what each host's `nixosSystem` takes.
# The whole interface, with examples and the rules, is docs/compose.md.
#
#   hosts.<name> = {
#     system = "x86_64-linux";
#     aspects = [ "base" "web" ];           # names, inline aspects, functions
#     users.<user> = { aspects = [ ... ]; ... };
#     deploy = { targetHost = "..."; ... }; # waymark.deploy settings
#     excludes = [ "..." ];
#     homeManager = false;                  # wire home.<user> into the host
#     <fact> = ...;                          # read by aspects as host.<fact>
#   };
#   aspects.<name> = { nixos; homeManager; deploy; includes; excludes; provides; }
#                    # or a function of the context: { host, user, ... }: { ... }
#   policies.<name> = { context; includes; excludes; substitutes; }
#                    # or a function of the context returning that
#
# Returns plain data plus modules:
#
#   hosts.<name> = { system; modules; home.<user>; deploy; aspects; context; }
#   nixosConfigurations = { nixosSystem, modules ? [ ], specialArgs ? { } }: { <name> = nixosSystem { ... }; }
#
# `settings` (lib.composeWith): `engine` ("fast", the default, or
# "reference": the same result, slower; see reference.nix) and
# `maxPolicyRounds` (10). Builtins only, like lib.fleet.
{
  settings ? { },
  ...
}:
declarations:
let
  inherit (builtins)
    all
    attrNames
    concatLists
    concatStringsSep
    elem
    filter
    foldl'
    isAttrs
    isBool
    isFunction
    isList
    isString
    map
    mapAttrs
    typeOf
    ;

  common = import ./common.nix;
  inherit (common) fail;

  knownSettings = [
    "engine"
    "maxPolicyRounds"
  ];
  unknownSettings = filter (k: !(elem k knownSettings)) (attrNames settings);
  engineName = settings.engine or "fast";
  engines = {
    fast = ./fast.nix;
    reference = ./reference.nix;
  };
  maxRounds = settings.maxPolicyRounds or 10;

  decl = common.checkKeys "the argument of lib.compose" [ "hosts" "aspects" "policies" ] declarations;
  hostDecls = decl.hosts or { };
  aspects = decl.aspects or { };
  policies = decl.policies or { };

  engine = (import engines.${engineName} { inherit common; }) aspects;

  listOf =
    what: check: v:
    if isList v && all check v then
      v
    else
      fail "${what} must be a list${if isList v then " of aspect names" else ", is a ${typeOf v}"}";

  composeHost =
    name: h:
    let
      where = "host \"${name}\"";
      system =
        if isString (h.system or null) then h.system else fail "${where} needs system (e.g. \"x86_64-linux\")";
      users =
        if isAttrs (h.users or { }) then h.users or { } else fail "${where}: users must be an attribute set";
      userNames = attrNames users;
      hostFacts = h // {
        inherit name;
      };
      base = {
        host = hostFacts;
      };

      # Policies run on the host's context until the context they add stops
      # changing: a policy that reads a key another policy sets (and is
      # skipped until it is set) sees it in the next round.
      policyResults =
        ctx:
        concatLists (
          map (
            p:
            let
              decl = policies.${p};
              raw = if isFunction decl then common.call decl ctx else decl;
            in
            if raw == null then
              [ ]
            else if !isAttrs raw then
              fail "policy \"${p}\" gave a ${typeOf raw} for ${where}, not an attribute set of ${concatStringsSep ", " common.policyKeys}"
            else
              [
                {
                  name = p;
                  value = common.checkKeys "policy \"${p}\"" common.policyKeys raw;
                }
              ]
          ) (attrNames policies)
        );
      contextOf =
        results:
        foldl' (
          acc: r:
          let
            add = r.value.context or { };
          in
          foldl' (
            acc: k:
            if base ? ${k} || k == "user" then
              fail "policy \"${r.name}\" sets context.${k} for ${where}; host and user are the declarations themselves"
            else if acc ? ${k} && acc.${k}.value != add.${k} then
              fail "policies \"${acc.${k}.from}\" and \"${r.name}\" set context.${k} to different values for ${where}"
            else
              acc
              // {
                ${k} = {
                  value = add.${k};
                  from = r.name;
                };
              }
          ) acc (attrNames add)
        ) { } results;
      settle =
        round: previous:
        let
          results = policyResults (base // previous);
          added = contextOf results;
          context = mapAttrs (_: x: x.value) added;
          changed = filter (k: (previous.${k} or null) != (context.${k} or null)) (
            attrNames (previous // context)
          );
        in
        if context == previous then
          { inherit results context; }
        else if round >= maxRounds then
          fail "the policies of ${where} do not settle after ${toString maxRounds} rounds: context ${concatStringsSep ", " changed} still change (set by ${
            common.quoted (map (k: added.${k}.from or "none") changed)
          }); a policy must not feed on its own output, and context values must be plain data (functions never compare equal)"
        else
          settle (round + 1) context;
      settled = settle 1 { };
      ctx = base // settled.context;

      excludes =
        listOf "${where}: excludes" isString (h.excludes or [ ])
        ++ concatLists (map (r: listOf "policy \"${r.name}\": excludes" isString (r.value.excludes or [ ])) settled.results);
      substitutes = foldl' (
        acc: r:
        let
          s = r.value.substitutes or { };
        in
        foldl' (
          acc: k:
          if !isString s.${k} then
            fail "policy \"${r.name}\": substitutes.${k} must be an aspect's name"
          else if acc ? ${k} && acc.${k} != s.${k} then
            fail "policies substitute \"${k}\" with both \"${acc.${k}}\" and \"${s.${k}}\" for ${where}"
          else
            acc // { ${k} = s.${k}; }
        ) acc (attrNames s)
      ) { } settled.results;

      # The host's walk and each user's: the same excludes and substitutes,
      # the user's context adds `user`.
      walks = engine.resolveHost {
        host = {
          inherit ctx where;
          roots = [
            {
              pid = "host ${name}";
              items = listOf "${where}: aspects" (_: true) (h.aspects or [ ]);
            }
          ]
          ++ map (r: {
            pid = "policy ${r.name}";
            items = listOf "policy \"${r.name}\": includes" (_: true) (r.value.includes or [ ]);
          }) settled.results;
        };
        users = map (
          u:
          let
            user =
              if isAttrs users.${u} then
                users.${u}
              else
                fail "user \"${u}\" of ${where} is a ${typeOf users.${u}}, not an attribute set (aspects and facts)";
          in
          {
            name = u;
            ctx = ctx // {
              user = user // {
                name = u;
              };
            };
            where = "user \"${u}\" of ${where}";
            roots = [
              {
                pid = "user ${u}";
                items = listOf "user \"${u}\" of ${where}: aspects" (_: true) (user.aspects or [ ]);
              }
            ];
          }
        ) userNames;
        inherit excludes substitutes;
      };

      hostEntries = map (e: e // { key = e.id; }) walks.host;
      userEntries = builtins.mapAttrs (
        u: map (e: e // { key = if e.userBound then "${e.id}@${u}" else e.id; })
      ) walks.users;

      # The host's aspects, then each user's (by name) that are not there
      # already: an aspect two users include contributes once, unless its
      # content depends on the user. (Each walk places an aspect once by
      # itself; only what one walk placed is left out of the next, so an
      # engine that placed one twice would show.)
      entries =
        (foldl'
          (acc: mine: {
            out = acc.out ++ filter (e: !(acc.seen ? ${e.key})) mine;
            seen = acc.seen // common.keySet mine;
          })
          {
            out = hostEntries;
            seen = common.keySet hostEntries;
          }
          (map (u: userEntries.${u}) userNames)
        ).out;
      home = mapAttrs (
        _: mine:
        let
          hostKeys = common.keySet hostEntries;
        in
        map (e: common.wrap e.key e.homeManager) (
          filter (e: e.homeManager != null) (hostEntries ++ filter (e: !(hostKeys ? ${e.key})) mine)
        )
      ) userEntries;

      wantsHome =
        if isBool (h.homeManager or false) then h.homeManager or false else fail "${where}: homeManager must be a boolean";

      deploy = common.mergeDeploy where name (
        if isAttrs (h.deploy or { }) then h.deploy or { } else fail "${where}: deploy must be an attribute set"
      ) entries;

      hostModule =
        { lib, ... }:
        {
          _file = "host ${name} (lib.compose)";
          key = "waymark-compose:host ${name}";
          config = {
            networking.hostName = lib.mkDefault name;
            nixpkgs.hostPlatform = lib.mkDefault system;
            waymark.deploy = deploy;
          }
          // (
            if wantsHome then
              {
                home-manager.users = mapAttrs (_: modules: { imports = modules; }) home;
              }
            else
              { }
          );
        };
    in
    # Excludes and substitutes are read only where a name is looked up:
    # a bad one is an error all the same.
    builtins.deepSeq [ excludes substitutes ] {
      inherit system home deploy;
      modules = [ hostModule ] ++ map (e: common.wrap e.key e.nixos) (filter (e: e.nixos != null) entries);
      aspects = map (e: e.key) entries;
      inherit (settled) context;
    };

  hosts = mapAttrs (
    name: h:
    if isAttrs h then
      composeHost name h
    else
      fail "host \"${name}\" is a ${typeOf h}, not an attribute set (system, aspects, users, deploy, facts)"
  ) hostDecls;
in
if unknownSettings != [ ] then
  fail "unknown settings: ${concatStringsSep ", " unknownSettings} (known: ${concatStringsSep ", " knownSettings})"
else if !(engines ? ${engineName}) then
  fail "unknown engine \"${toString engineName}\" (known: fast, reference)"
else if !(isAttrs aspects && common.checkNames "" aspects) then
  fail "aspects must be an attribute set"
else
  {
    inherit hosts;
    nixosConfigurations =
      {
        nixosSystem,
        modules ? [ ],
        specialArgs ? { },
      }:
      mapAttrs (
        _: h:
        nixosSystem {
          inherit specialArgs;
          modules = modules ++ h.modules;
        }
      ) hosts;
  }
