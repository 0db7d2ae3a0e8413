#!/usr/bin/env bash
# sync-contract.sh against small fake nixpkgs checkouts made here (this
# machine has no nixpkgs checkout): one whose woodpecker module declares what
# the contract declares, one where it changed (a type, a default, an option
# gone, an option added), one without the file. Run by run.sh with
# NIXPKGS_LIB set; prints what failed and exits 1 on a failure.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${NIXPKGS_LIB:?run through checks/modules/run.sh}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
fail() {
  echo "  $1"
  failed=1
}

# A checkout holding nixpkgs' lib and one module file, written from $2.
checkout() {
  local dir=$tmp/$1
  mkdir -p "$dir/nixos/modules/services/continuous-integration/woodpecker"
  ln -s "$NIXPKGS_LIB" "$dir/lib"
  [[ -z $2 ]] || printf '%s\n' "$2" >"$dir/nixos/modules/services/continuous-integration/woodpecker/agents.nix"
  echo "$dir"
}

agents() {
  cat <<NIX
{ lib, pkgs, ... }:
{
  options.services.woodpecker-agents.agents = lib.mkOption {
    default = { };
    type = lib.types.attrsOf (lib.types.submodule {
      options = {
        enable = lib.mkEnableOption "this agent";
        package = lib.mkPackageOption pkgs "woodpecker-agent" { };
        environment = lib.mkOption { type = lib.types.attrsOf lib.types.str; default = { }; };
        extraGroups = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
        $1
      };
    });
  };
}
NIX
}

same=$(checkout same "$(agents '
        path = lib.mkOption { type = lib.types.listOf lib.types.package; default = [ ]; };
        environmentFile = lib.mkOption { type = lib.types.listOf lib.types.path; default = [ ]; };')")
out=$("$here/sync-contract.sh" "$same" services.woodpecker-agents.agents 2>&1)
rc=$?
((rc == 0)) || fail "same declarations: exit $rc, expected 0"
grep -q '^SAME 7$' <<<"$out" || fail "same declarations: no 'SAME 7' line"
! grep -qE '^(DIFF|MISSING|NEW) ' <<<"$out" || fail "same declarations: a difference was reported"

changed=$(checkout changed "$(agents '
        environmentFile = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ "/x" ]; };
        backend = lib.mkOption { type = lib.types.str; default = "local"; };')")
out=$("$here/sync-contract.sh" "$changed" services.woodpecker-agents.agents 2>&1)
rc=$?
((rc == 1)) || fail "changed declarations: exit $rc, expected 1"
# lib names the path type "path" or "absolute path", by version.
grep -qE '^DIFF services\.woodpecker-agents\.agents\.<name>\.environmentFile: type: contract "list of (absolute )?path", nixpkgs "list of string"$' <<<"$out" ||
  fail "changed declarations: no DIFF line for environmentFile's type"
for line in \
  'DIFF services.woodpecker-agents.agents.<name>.environmentFile: default: contract [ ], nixpkgs [ "/x" ]' \
  'MISSING services.woodpecker-agents.agents.<name>.path: not declared by nixos/modules/services/continuous-integration/woodpecker/agents.nix in the checkout' \
  'NEW services.woodpecker-agents.agents.<name>.backend'; do
  grep -qxF "$line" <<<"$out" || fail "changed declarations: no line: $line"
done

without=$(checkout without "")
out=$("$here/sync-contract.sh" "$without" services.woodpecker-agents.agents 2>&1)
rc=$?
((rc == 1)) || fail "file missing: exit $rc, expected 1"
grep -qxF 'MISSING services.woodpecker-agents.agents: the checkout has no nixos/modules/services/continuous-integration/woodpecker/agents.nix' <<<"$out" ||
  fail "file missing: no MISSING line for the file"

"$here/sync-contract.sh" "$tmp/nothing-here" >/dev/null 2>&1
rc=$?
((rc == 2)) || fail "not a checkout: exit $rc, expected 2"

if ((failed)); then
  printf '%s\n' "last output:" "$out" | sed 's/^/  /'
  exit 1
fi
