# The engine `lib.compose` uses: the rules of reference.nix, walked with
# less work. What differs, and why the result is the same:
#
# - The named aspects are flattened once per fleet into a table ("a.b" is a
#   key), so a lookup is one attribute access, not a walk of `provides`.
# - The state is attribute sets (what was seen, the current path, the
#   exclusions in scope), not lists searched at every step, and it grows in
#   chunks (see `put`).
# - An aspect is unfolded again only when its exclusions now are not a
#   superset of those of an earlier visit. With more exclusions its subtree
#   is the earlier one cut further, so all of it was placed already; the
#   reference unfolds every new set of exclusions instead.
# - A parametric aspect is called once per walk, not at every visit, and
#   its arguments are read once per fleet.
# - Each include is visited inline in the loop over its list (a call of a
#   function of four arguments is four calls, at every step).
{ common }:
aspects:
let
  inherit (builtins)
    all
    any
    attrNames
    elemAt
    foldl'
    genList
    isAttrs
    isFunction
    isString
    length
    listToAttrs
    ;

  # Every named aspect, nested ones under "parent.child"; a parametric
  # aspect's nested ones are not known until it is called, and a lookup
  # below one says so (as the reference does).
  flatten =
    prefix: set:
    builtins.concatMap (
      n:
      let
        v = set.${n};
        full = "${prefix}${n}";
      in
      [
        {
          name = full;
          value = rec {
            def = v;
            parametric = isFunction v;
            # A static aspect is checked once for the fleet, when first used;
            # a parametric one's arguments are read once too.
            checked = common.checkAspect (common.aspectWhat full false null) v;
            args = if isFunction v then builtins.functionArgs v else { };
            required = builtins.filter (n: !args.${n}) (attrNames args);
            wholeContext = args == { };
          };
        }
      ]
      ++ (if isAttrs v && v ? provides then flatten "${full}." v.provides else [ ])
    ) (attrNames set);
  table = listToAttrs (flatten "" aspects);

  # Why a name is not in the table (a walk looks in the table first).
  lookup =
    where: id:
    (
      let
        # The first parametric aspect on the way explains the miss, as in
        # the reference's walk down `provides`.
        segments = builtins.filter isString (builtins.split "\\." id);
        prefixes = genList (
          i: builtins.concatStringsSep "." (genList (j: elemAt segments j) (i + 1))
        ) (length segments - 1);
        parametric = builtins.filter (p: (table.${p}.parametric or false)) prefixes;
      in
      if parametric != [ ] then
        common.parametricParent where (builtins.head parametric) id
      else
        common.unknownAspect where id
    );

  # The walk's state grows by one aspect at a time. Adding to an attribute
  # set or a list copies it, so additions go to a small set and list first,
  # moved into the large ones every `chunk` additions: a few copies of the
  # large ones instead of one per aspect.
  chunk = 32;
  emptyState = {
    big = { };
    recent = { };
    nRecent = 0;
    chunks = [ ];
    tail = [ ];
  };
  put =
    state: id: v:
    if state.nRecent >= chunk then
      state
      // {
        big = state.big // state.recent // { ${id} = v; };
        recent = { };
        nRecent = 0;
      }
    else
      state
      // {
        recent = state.recent // { ${id} = v; };
        nRecent = state.nRecent + 1;
      };
  # `put`, and the entry added to the walk's output, in one copy of the state.
  place =
    state: id: v: entry:
    let
      recorded =
        if state.nRecent >= chunk then
          {
            big = state.big // state.recent // { ${id} = v; };
            recent = { };
            nRecent = 0;
          }
        else
          {
            recent = state.recent // { ${id} = v; };
            nRecent = state.nRecent + 1;
          };
      emitted =
        if length state.tail >= chunk then
          {
            chunks = state.chunks ++ [ (state.tail ++ [ entry ]) ];
            tail = [ ];
          }
        else
          { tail = state.tail ++ [ entry ]; };
    in
    state // recorded // emitted;

  resolve =
    {
      ctx,
      roots,
      excludes,
      substitutes,
      where,
    }:
    let
      globalOut = listToAttrs (
        map (n: {
          name = n;
          value = true;
        }) excludes
      );

      # Walks one list of includes, each item visited inline (see above).
      visitList =
        state: frame:
        let
          n = length frame.items;
          go =
            state: index:
            if index == n then
              state
            else
              go (
                let
                  raw = elemAt frame.items index;
                  item =
                    if isString raw || isAttrs raw || isFunction raw then
                      raw
                    else
                      common.checkItem "${frame.pid} in ${where}" raw;
                  named = isString item;
                  id = if named then substitutes.${item} or item else "${frame.pid}/${toString index}";
                  out =
                    named
                    && (globalOut ? ${item} || globalOut ? ${id} || frame.scope ? ${item} || frame.scope ? ${id});
                  known = state.recent.${id} or state.big.${id} or null;
                  # The frame of what `record` includes, in its scope.
                  childOf = record: {
                    pid = id;
                    items = record.value.includes or [ ];
                    scope =
                      if (record.value.excludes or [ ]) == [ ] then
                        frame.scope
                      else
                        frame.scope
                        // listToAttrs (
                          map (n: {
                            name = n;
                            value = true;
                          }) record.value.excludes
                        );
                    path = frame.path // {
                      ${id} = true;
                    };
                    pathList = frame.pathList ++ [ id ];
                    parentBound = record.bound;
                  };
                in
                if out then
                  state
                else if named && frame.path ? ${id} then
                  common.cycle where frame.pathList id
                else if known != null then
                  # `open`: visited once with no exclusions, a subset of any.
                  if known.skipped || known.open || any (s: builtins.intersectAttrs s frame.scope == s) known.scopes then
                    state
                  else
                    # Met with exclusions that do not contain an earlier visit's:
                    # unfold it again (it is placed already).
                    visitList (put state id (
                      known
                      // {
                        scopes = known.scopes ++ [ frame.scope ];
                        open = frame.scope == { };
                      }
                    )) (childOf known)
                else
                  let
                    found = if named then table.${id} or (lookup "${frame.pid} in ${where}" id) else null;
                    def = if named then found.def else item;
                    called =
                      if !(isFunction def) then
                        def
                      else if named then
                        # common.call, with the arguments read once per fleet.
                        if found.wholeContext then
                          def ctx
                        else if all (n: ctx ? ${n}) found.required then
                          def (builtins.intersectAttrs found.args ctx)
                        else
                          null
                      else
                        common.call def ctx;
                  in
                  if called == null then
                    # Skipped now is skipped at every visit: the context is fixed.
                    put state id { skipped = true; }
                  else
                    let
                      value =
                        if named && !found.parametric then
                          found.checked
                        else
                          common.checkUnnamed (common.aspectWhat id (isFunction def) where) called;
                      known' = {
                        skipped = false;
                        inherit value;
                        bound =
                          if named then
                            found.parametric && (found.args ? user || (found.wholeContext && ctx ? user))
                          else
                            (isFunction def && common.takesUser def ctx) || frame.parentBound;
                        scopes = [ frame.scope ];
                        open = frame.scope == { };
                      };
                    in
                    visitList (place state id known' {
                      inherit id;
                      userBound = known'.bound;
                      nixos = value.nixos or null;
                      homeManager = value.homeManager or null;
                      deploy = value.deploy or null;
                    }) (childOf known')
              ) (index + 1);
        in
        go state 0;

      final =
        foldl'
          (
            st: root:
            visitList st {
              inherit (root) pid items;
              scope = { };
              path = { };
              pathList = [ ];
              parentBound = false;
            }
          )
          emptyState
          roots;
    in
    builtins.concatLists (final.chunks ++ [ final.tail ]);
in
{
  # A host's walk and each of its users'. (Starting a user's walk from the
  # host's state, minus what can read the user, was tried: on the
  # benchmark's fleet nearly every aspect has something below it that reads
  # the user, so it saved nothing and added a way to be wrong.)
  resolveHost =
    {
      host,
      users,
      excludes,
      substitutes,
    }:
    {
      host = resolve (host // { inherit excludes substitutes; });
      users = listToAttrs (
        map (u: {
          inherit (u) name;
          value = resolve {
            inherit (u) ctx roots where;
            inherit excludes substitutes;
          };
        }) users
      );
    };
}
