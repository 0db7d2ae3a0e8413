# The checks check what they say: every test evaluates its hosts with the
# system evaluator it is given, so that in `nix flake check` (modules-nixos)
# it runs against the real `nixosSystem` and not the contract. Each test is
# run with an evaluator that throws; a test that still passes ignored it.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };

  # Tests that evaluate no host, with why.
  noHost = {
    # Reads the repository's files and lints them.
    "test-no-second-list.nix" = true;
    # Reads the contract's declarations and their sources.
    "test-contract-sources.nix" = true;
  };

  tests = lib.filter (
    name: lib.hasPrefix "test-" name && lib.hasSuffix ".nix" name && name != "test-checks.nix" && !(noHost ? ${name})
  ) (lib.attrNames (builtins.readDir ./.));

  spy = _: throw "the test evaluated a host with the evaluator it was given";
  ignoresEvaluator =
    name: (builtins.tryEval (import (./. + "/${name}") { inherit lib; evalSystem = spy; })).success;
in
t.all [
  (t.ok "there are tests to check" (tests != [ ]))
  (t.eq "every test evaluates its hosts with the evaluator it is given" [ ] (lib.filter ignoresEvaluator tests))
]
