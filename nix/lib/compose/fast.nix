# The engine `lib.compose` uses: the rules of reference.nix, walked with
# less work. What differs, and why the result is the same:
#
# - The named aspects are flattened once per fleet into a table ("a.b" is a
#   key), so a lookup is one attribute access, not a walk of `provides`.
# - The state is attribute sets (what was seen, the current path, the
#   exclusions in scope), not lists searched at every step.
# - An aspect is unfolded again only when its exclusions now are not a
#   superset of those of an earlier visit. With more exclusions its subtree
#   is the earlier one cut further, so all of it was placed already; the
#   reference unfolds every new set of exclusions instead.
# - A parametric aspect is called once per resolution, not at every visit.
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
    foldl' (
      acc: n:
      let
        v = set.${n};
        full = "${prefix}${n}";
        own = {
          ${full} = {
            def = v;
            parametric = isFunction v;
          };
        };
      in
      acc // own // (if isAttrs v && v ? provides then flatten "${full}." v.provides else { })
    ) { } (attrNames set);
  table = flatten "" aspects;

  lookup =
    where: id:
    table.${id} or (
      let
        # The longest declared parametric prefix explains the miss.
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

  subset = small: big: all (n: big ? ${n}) (attrNames small);

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

      visitList =
        state: frame:
        let
          n = length frame.items;
          go =
            st: i:
            if i == n then
              st
            else
              go (visit st frame i (common.checkItem "${frame.pid} in ${where}" (elemAt frame.items i))) (i + 1);
        in
        go state 0;

      visit =
        state: frame: index: item:
        let
          named = isString item;
          id = if named then substitutes.${item} or item else "${frame.pid}/${toString index}";
          out =
            named
            && (globalOut ? ${item} || globalOut ? ${id} || frame.scope ? ${item} || frame.scope ? ${id});
          known = state.seen.${id} or null;
        in
        if out then
          state
        else if named && frame.path ? ${id} then
          common.cycle where frame.pathList id
        else if known != null then
          if known.skipped || any (s: subset s frame.scope) known.scopes then
            state
          else
            # Met with exclusions that do not contain an earlier visit's:
            # unfold it again (it is placed already).
            visitChildren (
              state
              // {
                seen = state.seen // {
                  ${id} = known // {
                    scopes = known.scopes ++ [ frame.scope ];
                  };
                };
              }
            ) frame id known
        else
          let
            def = if named then (lookup "${frame.pid} in ${where}" id).def else item;
            called = if isFunction def then common.call def ctx else def;
          in
          if called == null then
            # Skipped now is skipped at every visit: the context is fixed.
            state
            // {
              seen = state.seen // {
                ${id} = {
                  skipped = true;
                };
              };
            }
          else
            let
              value = common.checkAspect "aspect \"${id}\" in ${where}" called;
              known' = {
                skipped = false;
                inherit value;
                bound = (isFunction def && common.takesUser def ctx) || (!named && frame.parentBound);
                scopes = [ frame.scope ];
              };
            in
            visitChildren (
              state
              // {
                seen = state.seen // {
                  ${id} = known';
                };
                out = state.out ++ [
                  {
                    inherit id;
                    userBound = known'.bound;
                    nixos = value.nixos or null;
                    homeManager = value.homeManager or null;
                    deploy = value.deploy or null;
                  }
                ];
              }
            ) frame id known';

      visitChildren =
        state: frame: id: known:
        visitList state {
          pid = id;
          items = known.value.includes or [ ];
          scope =
            frame.scope
            // listToAttrs (
              map (n: {
                name = n;
                value = true;
              }) (known.value.excludes or [ ])
            );
          path = frame.path // {
            ${id} = true;
          };
          pathList = frame.pathList ++ [ id ];
          parentBound = known.bound;
        };

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
          {
            seen = { };
            out = [ ];
          }
          roots;
    in
    final.out;
in
{
  inherit resolve;
}
