# What both engines of `lib.compose` share: the checks of a declaration and
# their messages, the call of a parametric declaration, and the shape of the
# output (modules with their aspect's name, the deploy declaration). The
# engines differ in how they walk the includes (reference.nix, fast.nix);
# sharing the messages lets one error test run against both.
let
  inherit (builtins)
    all
    attrNames
    concatStringsSep
    filter
    foldl'
    functionArgs
    intersectAttrs
    isAttrs
    isFunction
    isList
    isString
    listToAttrs
    typeOf
    ;
in
rec {
  fail = msg: throw "lib.compose: ${msg}";

  aspectKeys = [
    "description"
    "nixos"
    "homeManager"
    "deploy"
    "includes"
    "excludes"
    "provides"
  ];

  policyKeys = [
    "description"
    "context"
    "includes"
    "excludes"
    "substitutes"
  ];

  quoted = names: concatStringsSep ", " (map (n: ''"${n}"'') names);

  checkKeys =
    what: allowed: attrs:
    let
      unknown = builtins.removeAttrs attrs allowed;
    in
    if unknown == { } then
      attrs
    else
      fail "${what} has unknown attributes ${quoted (attrNames unknown)} (known: ${concatStringsSep ", " allowed})";

  # A parametric declaration (`{ host, user, ... }: ...`) is called with the
  # context's attributes it names, and is skipped (null) when the context
  # lacks one it requires: an aspect for users is skipped at the host's
  # level, one for a context key no policy set is skipped everywhere. A
  # lambda without a pattern (`ctx: ...`) gets the whole context.
  call =
    f: ctx:
    let
      args = functionArgs f;
    in
    if args == { } then
      f ctx
    else if all (n: args.${n} || ctx ? ${n}) (attrNames args) then
      f (intersectAttrs args ctx)
    else
      null;

  # Whether a declaration's content can differ between the users of a host:
  # then it is kept once per user, not once per host.
  takesUser = f: ctx: let args = functionArgs f; in args ? user || (args == { } && ctx ? user);

  # The value of an aspect (after the call, for a parametric one), checked.
  # A static aspect's errors name the aspect; a parametric one's also the
  # host or user it was called for, as its value depends on them.
  aspectWhat = id: parametric: where: if parametric then ''aspect "${id}" in ${where}'' else ''aspect "${id}"'';
  checkAspect =
    what: v:
    if !isAttrs v then
      fail "${what} is a ${typeOf v}, not an aspect (an attribute set of ${concatStringsSep ", " aspectKeys}, or a function of the context returning one)"
    else
      let
        # checkKeys, written out: this runs for every parametric aspect of
        # every walk.
        a = if builtins.removeAttrs v aspectKeys == { } then v else checkKeys what aspectKeys v;
      in
      if !isList (a.includes or [ ]) then
        fail "${what}: includes is a ${typeOf a.includes}, not a list"
      else if !(isList (a.excludes or [ ]) && all isString (a.excludes or [ ])) then
        fail "${what}: excludes must be a list of aspect names"
      else if (a ? deploy) && !(isAttrs a.deploy) then
        fail "${what}: deploy is a ${typeOf a.deploy}, not an attribute set of waymark.deploy settings"
      else
        a;

  # An aspect that is not a named attribute set: an inline one, or what a
  # function returned. Its `provides` could never be named, so it is an
  # error rather than ignored.
  checkUnnamed =
    what: v:
    let
      a = checkAspect what v;
    in
    if a ? provides then
      fail "${what}: provides is only seen on a named aspect that is an attribute set; declare the nested aspects there"
    else
      a;

  # The items of `includes`: a name of `aspects` ("a", or "a.b" for the
  # nested aspect b of a), an inline aspect, or a function of the context.
  checkItem =
    where: item:
    if isString item || isAttrs item || isFunction item then
      item
    else
      fail "${where} includes a ${typeOf item}; an include is an aspect's name, an aspect, or a function of the context";

  unknownAspect = where: id: fail "aspect \"${id}\" (included by ${where}) is not declared";

  parametricParent =
    where: parent: id:
    fail "aspect \"${id}\" (included by ${where}) cannot be found: \"${parent}\" is parametric, and the nested aspects of a function are not visible; declare them on an attribute-set aspect";

  cycle =
    where: path: id:
    let
      # The cycle is the part of the path from the aspect's first visit on.
      from = foldl' (acc: n: if acc != [ ] || n == id then acc ++ [ n ] else acc) [ ] path;
    in
    fail "include cycle in ${where}: ${concatStringsSep " -> " (from ++ [ id ])}";

  # Names are joined with "." for nested aspects, so a name holds none.
  checkNames =
    prefix: aspects:
    foldl' (
      ok: n:
      let
        v = aspects.${n};
        full = "${prefix}${n}";
      in
      if builtins.match "[A-Za-z0-9_][A-Za-z0-9_-]*" n == null then
        fail "aspect name \"${full}\" is not a plain name (letters, digits, _ and -; nested aspects are written \"parent.child\" in includes)"
      else if isAttrs v && v ? provides then
        ok && checkNames "${full}." (checkKeys "aspect \"${full}\"" aspectKeys v).provides
      else
        ok
    ) true (attrNames aspects);

  # The keys of a walk's entries, as a set.
  keySet =
    entries:
    listToAttrs (
      map (e: {
        name = e.key;
        value = true;
      }) entries
    );

  # A part as a module: its aspect's name is its key (so the module system
  # keeps it once) and its file (so an error says "In `aspect web'").
  wrap = key: part: {
    _file = "aspect ${key}";
    key = "waymark-compose:${key}";
    imports = [ part ];
  };

  uniqueStrings =
    list:
    (foldl' (
      acc: x:
      if acc.seen ? ${x} then
        acc
      else
        {
          seen = acc.seen // {
            ${x} = true;
          };
          out = acc.out ++ [ x ];
        }
    ) {
      seen = { };
      out = [ ];
    } list).out;

  # The host's waymark.deploy from its own declaration and its aspects'
  # deploy parts. Lists add up, the host's first, then the aspects' in their
  # order (tags and dependsOn once each); any other
  # setting is the host's if it has it, else the one value its aspects
  # agree on: two aspects that disagree are an error naming both.
  mergeDeploy =
    where: hostName: own: entries:
    let
      parts = filter (e: e.deploy != null) entries;
      merged = foldl' (
        acc: e:
        foldl' (
          acc: k:
          let
            v = e.deploy.${k};
          in
          if isList v then
            acc // { ${k} = (acc.${k} or { value = [ ]; }) // { value = (acc.${k}.value or [ ]) ++ v; }; }
          else if acc ? ${k} && acc.${k}.value != v then
            fail "${where}: aspects \"${acc.${k}.from}\" and \"${e.key}\" set deploy.${k} to different values; set it on the host to choose"
          else
            acc
            // {
              ${k} = {
                value = v;
                from = e.key;
              };
            }
        ) acc (attrNames e.deploy)
      ) { } parts;
      fromAspects = builtins.mapAttrs (_: x: x.value) merged;
      lists = filter (k: isList (own.${k} or null) && fromAspects ? ${k}) (attrNames own);
      combined =
        fromAspects
        // own
        // listToAttrs (
          map (k: {
            name = k;
            value = own.${k} ++ fromAspects.${k};
          }) lists
        );
      unique = k: if combined ? ${k} then { ${k} = uniqueStrings combined.${k}; } else { };
    in
    {
      enable = true;
      name = hostName;
    }
    // combined
    // unique "tags"
    // unique "dependsOn";
}
