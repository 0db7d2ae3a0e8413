# Contract provenance: every option ./contract.nix declares names the nixpkgs
# file and revision it was copied from (./contract-sources.nix), every
# source entry names an option the contract declares, and every accepted
# difference is under one of them. sync-contract.sh re-reads them from a
# checkout (test-sync-contract.sh tests it).
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };
  sources = import ./contract-sources.nix;

  options =
    (lib.evalModules {
      modules = [
        ./contract.nix
        { _module.check = false; }
      ];
    }).options;

  declared = lib.sort lib.lessThan (
    map (o: lib.showOption o.loc) (
      lib.filter (o: lib.head o.loc != "_module") (lib.collect lib.isOption options)
    )
  );
  listed = lib.attrNames sources.options;
  badRevs = lib.filter (p: builtins.match "[0-9a-f]{40}" sources.options.${p}.rev == null) listed;
  strayAccepted = lib.filter (a: !lib.any (p: a == p || lib.hasPrefix "${p}." a) listed) (
    lib.attrNames sources.accepted
  );
in
# The contract under test is always the contract: the system evaluator is
# not used here (test-checks.nix lists this test as evaluating no host).
t.all [
  (t.eq "every option the contract declares has a source, and no source is stray" declared (
    lib.sort lib.lessThan listed
  ))
  (t.eq "every source names a full revision" [ ] badRevs)
  (t.eq "every accepted difference is under a listed option" [ ] strayAccepted)
  (t.ok "every source names a file under nixos/" (
    lib.all (p: lib.hasPrefix "nixos/" sources.options.${p}.file) listed
  ))
]
