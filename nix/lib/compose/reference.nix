# The reference engine of `lib.compose`: the rules of docs/compose.md
# written as directly as possible, for the fast engine (fast.nix) to be
# checked against. Speed is not its concern.
#
# The rules it implements: the includes are walked depth first, in order,
# each aspect before what it includes. Walking them unfolds a tree; an
# aspect's place in the result is its first place in that tree, and it
# contributes once. Inside an aspect's subtree its `excludes` are out; the
# host's excludes (its own and its policies') are out everywhere. A
# parametric aspect whose required argument the context lacks is skipped,
# with what it would include. An aspect met again below itself is a cycle.
#
# The tree can be exponentially large (diamonds), so the walk does not
# unfold what it has unfolded before: a second visit of the same aspect with
# the same exclusions is the same subtree, which adds nothing new. That is
# the one shortcut, and it keeps the rule's result.
{ common }:
aspects:
let
  inherit (builtins)
    concatStringsSep
    elem
    elemAt
    filter
    foldl'
    genList
    isFunction
    isString
    length
    lessThan
    sort
    split
    ;

  # "a.b.c": aspects.a.provides.b.provides.c, walked at every lookup.
  lookup =
    where: id:
    let
      segments = filter isString (split "\\." id);
      step =
        acc: seg:
        if acc.value == null then
          acc
        else if isFunction acc.value then
          common.parametricParent where acc.name id
        else
          let
            table = if acc.name == "" then aspects else (acc.value.provides or { });
          in
          {
            name = if acc.name == "" then seg else "${acc.name}.${seg}";
            value = table.${seg} or null;
          };
      found = foldl' step {
        name = "";
        value = aspects;
      } segments;
    in
    if found.value == null then common.unknownAspect where id else found.value;

  resolve =
    {
      ctx,
      roots,
      excludes,
      substitutes,
      where,
    }:
    let
      visitList =
        state: frame:
        foldl' (
          st: i:
          visit st (
            frame
            // {
              index = i;
              item = common.checkItem "${frame.pid} in ${where}" (elemAt frame.items i);
            }
          )
        ) state (genList (i: i) (length frame.items));

      visit =
        state:
        {
          pid,
          index,
          item,
          scope,
          path,
          parentBound,
          ...
        }:
        let
          named = isString item;
          id = if named then substitutes.${item} or item else "${pid}/${toString index}";
          excluded = named && (elem item excludes || elem id excludes || elem item scope || elem id scope);
          stateKey = "${id}|${concatStringsSep "," (sort lessThan scope)}";
          def = if named then lookup "${pid} in ${where}" id else item;
          called = if isFunction def then common.call def ctx else def;
          value = (if named && !(isFunction def) then common.checkAspect else common.checkUnnamed) (
            common.aspectWhat id (isFunction def) where
          ) called;
          bound = (isFunction def && common.takesUser def ctx) || (!named && parentBound);
          entry = {
            inherit id;
            userBound = bound;
            nixos = value.nixos or null;
            homeManager = value.homeManager or null;
            deploy = value.deploy or null;
          };
          emitted = elem id (map (e: e.id) state.out);
          afterSelf = {
            visited = state.visited ++ [ stateKey ];
            out = if emitted then state.out else state.out ++ [ entry ];
          };
        in
        if excluded then
          state
        else if named && elem id path then
          common.cycle where path id
        else if elem stateKey state.visited then
          state
        else if called == null then
          state
        else
          visitList afterSelf {
            pid = id;
            items = value.includes or [ ];
            scope = scope ++ filter (n: !(elem n scope)) (value.excludes or [ ]);
            path = path ++ [ id ];
            parentBound = bound;
          };

      final =
        foldl'
          (
            st: root:
            visitList st {
              inherit (root) pid items;
              scope = [ ];
              path = [ ];
              parentBound = false;
            }
          )
          {
            visited = [ ];
            out = [ ];
          }
          roots;
    in
    final.out;
in
{
  # A host's walk and each of its users', each from nothing.
  resolveHost =
    {
      host,
      users,
      excludes,
      substitutes,
    }:
    {
      host = resolve (host // { inherit excludes substitutes; });
      users = builtins.listToAttrs (
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
