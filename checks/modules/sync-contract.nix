# The comparison behind sync-contract.sh, for one option path of
# ./contract-sources.nix: the contract's declaration against the one the
# named file of a nixpkgs checkout makes, evaluated with the checkout's own
# lib. Returns report lines:
#
#   SAME n                      n declarations agree
#   DIFF <path>: <what>         type or default differs
#   ACCEPTED <path>: <why>      differs, kept on purpose (contract-sources.nix)
#   MISSING <path>: <why>       the contract declares it, the checkout does not
#   NEW <path>                  the checkout declares it inside a submodule the
#                               contract models, the contract does not
{
  nixpkgs,
  path,
}:
let
  lib = import (nixpkgs + "/lib");
  sources = import ./contract-sources.nix;
  src = sources.options.${path};
  loc = lib.splitString "." path;
  file = nixpkgs + "/${src.file}";

  standIn = import ./stand-in-pkgs.nix { inherit lib; };
  # What the declarations of the copied files use of pkgs beyond the
  # stand-ins; nothing here is built.
  pkgs = standIn // {
    formats.yaml = _: {
      type = lib.types.attrsOf lib.types.anything;
      generate = name: _: standIn.writeShellScript name "";
    };
    writeText = standIn.writeShellScript;
  };

  contractOptions =
    (lib.evalModules {
      modules = [
        ./contract.nix
        { _module.check = false; }
      ];
    }).options;

  upstreamOptions =
    (lib.evalModules {
      modules = [
        file
        (
          { config, ... }:
          {
            _module.check = false;
            _module.args = {
              inherit pkgs;
              utils =
                let
                  real = nixpkgs + "/nixos/lib/utils.nix";
                in
                if builtins.pathExists real then
                  import real { inherit lib config pkgs; }
                else
                  { escapeSystemdPath = lib.id; };
            };
          }
        )
      ];
    }).options;

  # A value as text, packages by name; "?" when it cannot be evaluated.
  norm =
    v:
    if lib.isDerivation v then
      "<package ${lib.getName v}>"
    else if lib.isList v then
      map norm v
    else if lib.isAttrs v then
      lib.mapAttrs (_: norm) v
    else if lib.isFunction v then
      "<function>"
    else
      v;
  show =
    v:
    let
      r = builtins.tryEval (
        let
          n = norm v;
        in
        builtins.deepSeq n n
      );
    in
    if r.success then lib.generators.toPretty { multiline = false; } r.value else "?";

  typeOf =
    opt:
    let
      r = builtins.tryEval opt.type.description;
    in
    if r.success then r.value else "?";
  defaultOf = opt: if opt ? default then show opt.default else "<none>";

  # The options below a submodule-typed option, by relative path.
  subOptions =
    opt:
    let
      r = builtins.tryEval (opt.type.getSubOptions [ ]);
      walk =
        prefix: set:
        lib.concatLists (
          lib.mapAttrsToList (
            n: v:
            if n == "_module" then
              [ ]
            else if lib.isOption v then
              [
                {
                  path = prefix ++ [ n ];
                  opt = v;
                }
              ]
            else if lib.isAttrs v then
              walk (prefix ++ [ n ]) v
            else
              [ ]
          ) set
        );
    in
    if r.success && lib.isAttrs r.value then walk [ ] r.value else [ ];

  # How a sub-option path is printed: attrsOf/lazyAttrsOf elements as <name>.
  childPrefix =
    opt: shown:
    let
      name = opt.type.name or "";
    in
    if
      lib.elem name [
        "attrsOf"
        "lazyAttrsOf"
        "attrsWith"
      ]
    then
      "${shown}.<name>"
    else
      shown;

  compare =
    depth: shown: mine: theirs:
    let
      accepted = sources.accepted.${shown} or null;
      own =
        lib.optional (typeOf mine != typeOf theirs) "type: contract \"${typeOf mine}\", nixpkgs \"${typeOf theirs}\""
        ++ lib.optional (
          defaultOf mine != defaultOf theirs && defaultOf mine != "?" && defaultOf theirs != "?"
        ) "default: contract ${defaultOf mine}, nixpkgs ${defaultOf theirs}";
      ownLines =
        if own == [ ] then
          [ "SAME 1" ]
        else if accepted != null then
          [ "ACCEPTED ${shown}: ${accepted}" ]
        else
          map (d: "DIFF ${shown}: ${d}") own;

      mineSubs = if depth < 4 then subOptions mine else [ ];
      theirSubs = subOptions theirs;
      key = s: lib.concatStringsSep "." s.path;
      theirsByKey = lib.listToAttrs (map (s: lib.nameValuePair (key s) s.opt) theirSubs);
      mineKeys = map key mineSubs;
      prefix = childPrefix mine shown;
      subLines = lib.concatMap (
        s:
        let
          p = "${prefix}.${key s}";
        in
        if theirsByKey ? ${key s} then
          compare (depth + 1) p s.opt theirsByKey.${key s}
        else
          [ "MISSING ${p}: not declared by ${src.file} in the checkout" ]
      ) mineSubs;
      newLines = lib.optionals (mineSubs != [ ] && sources.accepted.${shown} or null == null) (
        map (s: "NEW ${prefix}.${key s}") (lib.filter (s: !(lib.elem (key s) mineKeys)) theirSubs)
      );
    in
    ownLines ++ subLines ++ newLines;

  mine = lib.attrByPath loc null contractOptions;
  theirs = lib.attrByPath loc null upstreamOptions;

  lines =
    if !(builtins.pathExists file) then
      [ "MISSING ${path}: the checkout has no ${src.file}" ]
    else if theirs == null || !(lib.isOption theirs) then
      [ "MISSING ${path}: not declared by ${src.file} in the checkout" ]
    else
      compare 0 path mine theirs;

  sameCount = lib.length (lib.filter (l: l == "SAME 1") lines);
in
lib.concatLines (
  lib.optional (sameCount > 0) "SAME ${toString sameCount}" ++ lib.filter (l: l != "SAME 1") lines
)
