# Helpers of the module tests (checks/modules/test-*.nix).
#
# A test file is `{ lib, evalSystem ? null, forceConfig ? null }: <bool>`. It
# returns true or throws a message starting with "FAILED <test name>".
#
# - `evalSystem modules` returns the `config` of a NixOS host made of
#   `modules` and nothing of Waymark's: by default `lib.evalModules` against
#   the contract (./contract.nix, with stand-in pkgs) and ./host-stubs.nix;
#   checks/default.nix passes one that uses the real `nixosSystem` instead.
#   Every test must use it (test-checks.nix fails on one that does not).
# - `eval modules` is `evalSystem` with Waymark's modules
#   (modules/default.nix) added.
# - `forceConfig config` forces what a host would build. By default it
#   deep-evaluates the parts of the contract the modules write;
#   checks/default.nix passes the toplevel's drvPath.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  contractSystem =
    modules:
    (lib.evalModules {
      modules = [
        ./contract.nix
        ./host-stubs.nix
      ]
      ++ modules;
    }).config;
  contractForce =
    config:
    builtins.deepSeq {
      inherit (config)
        assertions
        warnings
        users
        ;
      inherit (config.environment) systemPackages variables;
      inherit (config.nix) settings;
      inherit (config.systemd) timers tmpfiles;
      services = lib.mapAttrs (_: s: {
        inherit (s)
          environment
          serviceConfig
          unitConfig
          startAt
          onFailure
          ;
      }) config.systemd.services;
    } true;

  pretty = lib.generators.toPretty { };
in
rec {
  # Whether the tests run against the contract (true) or the real nixosSystem.
  contract = evalSystem == null;

  system = if contract then contractSystem else evalSystem;
  eval = modules: system ([ ../../modules/default.nix ] ++ modules);
  force = if forceConfig != null then forceConfig else contractForce;

  # The repository root and the files a test may read.
  root = ../..;

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  fail = name: why: throw "FAILED ${name}: ${why}";

  ok = name: condition: if condition then true else fail name "condition is false";

  eq =
    name: expected: actual:
    if expected == actual then
      true
    else
      fail name "\n  expected: ${pretty expected}\n  actual:   ${pretty actual}";

  # The host evaluates, every assertion holds, and what it would build can be
  # computed.
  clean =
    name: config:
    let
      failed = failedAssertions config;
    in
    if failed != [ ] then
      fail name "unexpected failed assertions:\n${lib.concatStringsSep "\n" failed}"
    else
      builtins.seq (force config) true;

  # Some assertion fails, and the failures' messages contain every fragment.
  failsWith =
    name: fragments: config:
    let
      messages = lib.concatStringsSep "\n" (failedAssertions config);
      absent = lib.filter (f: !(lib.hasInfix f messages)) fragments;
    in
    if messages == "" then
      fail name "expected a failed assertion, but all hold"
    else if absent != [ ] then
      fail name "the failed assertions do not mention ${pretty absent}:\n${messages}"
    else
      true;

  # Evaluating `value` deeply throws (a type error, a missing option, ...).
  throws =
    name: value:
    if (builtins.tryEval (builtins.deepSeq value value)).success then
      fail name "expected evaluation to fail, but it succeeded"
    else
      true;

  # A host with the harness enabled on bash and coreutils: the base of most tests.
  harnessHost =
    name:
    { pkgs, ... }:
    {
      networking.hostName = name;
      waymark.harness.enable = true;
      waymark.harness.packages = [
        pkgs.bash
        pkgs.coreutils
      ];
    };

  # Every test in `tests` (a list of booleans), forced in order.
  all = tests: builtins.foldl' (acc: t: builtins.seq t (acc && t)) true tests;

  # Store paths of the harness env in a string (a PATH, an ExecStart, ...).
  envPathsIn =
    s:
    lib.unique (
      lib.concatMap (m: if lib.isList m then [ (lib.head m) ] else [ ]) (
        builtins.split "(/nix/store/[a-z0-9]+-waymark-harness-env)" s
      )
    );
}
