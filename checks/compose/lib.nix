# Helpers of the composition tests (checks/compose/test-*.nix), builtins
# only. A test returns true or throws "FAILED <name> [<engine>]: <why>".
{ engine }:
let
  inherit (builtins)
    attrNames
    concatStringsSep
    deepSeq
    isAttrs
    isFunction
    isList
    isString
    toJSON
    tryEval
    ;
in
rec {
  # Readable values in failure messages, functions included.
  show =
    v:
    if isFunction v then
      "<function>"
    else if isList v then
      "[ ${concatStringsSep " " (map show v)} ]"
    else if isAttrs v then
      "{ ${concatStringsSep " " (map (k: "${k} = ${show v.${k}};") (attrNames v))} }"
    else if isString v then
      toJSON v
    else
      toJSON v;

  fail = name: why: throw "FAILED ${name} [${engine}]: ${why}";

  ok = name: condition: if condition then true else fail name "condition is false";

  eq =
    name: expected: actual:
    if expected == actual then
      true
    else
      fail name "\n  expected: ${show expected}\n  actual:   ${show actual}";

  # An error is expected; its message is checked by errors.nix through
  # run.sh (tryEval cannot read it).
  throws =
    name: expr:
    if (tryEval (deepSeq expr expr)).success then fail name "evaluated; an error was expected" else true;

  # Each element is true or throws; all of them are forced.
  all = tests: builtins.all (x: x) tests;

  # What a host's modules say, without the host's own first module (a
  # function of lib): each aspect's part by its key.
  parts = host: map (m: { inherit (m) key _file; part = builtins.head m.imports; }) (builtins.tail host.modules);
  partsOf = host: map (p: p.part) (parts host);
}
