#!/usr/bin/env bash
# Re-reads, from a nixpkgs checkout, the declarations that
# checks/modules/contract.nix copies (the files and revisions named in
# contract-sources.nix) and reports each difference in type, default or
# sub-options, so the contract can be re-synced when flake.lock moves.
#
#   checks/modules/sync-contract.sh NIXPKGS_CHECKOUT [OPTION_PATH...]
#
# Without option paths it compares every entry of contract-sources.nix. Each
# path is evaluated on its own, so a declaration that cannot be evaluated is
# reported (NOT COMPARED) without hiding the others. Exit status: 0 when
# everything agrees (ACCEPTED and NEW lines are information), 1 when a
# declaration differs or is missing, 2 on bad usage or when a path could not
# be compared.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

if (($# < 1)); then
  echo "usage: $0 NIXPKGS_CHECKOUT [OPTION_PATH...]" >&2
  exit 2
fi
checkout=$(cd "$1" 2>/dev/null && pwd) || {
  echo "error: $1 is not a directory; pass a nixpkgs checkout" >&2
  exit 2
}
shift
if [[ ! -f $checkout/lib/default.nix ]]; then
  echo "error: $checkout has no lib/default.nix; pass the root of a nixpkgs checkout" >&2
  exit 2
fi

export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes\nbuild-users-group ='
nix_eval() {
  nix eval --raw --impure --expr "$1"
}

if (($#)); then
  paths=("$@")
else
  mapfile -t paths < <(nix_eval "builtins.concatStringsSep \"\\n\" (builtins.attrNames (import $here/contract-sources.nix).options)")
fi

locked=$(sed -n 's/.*"rev": "\([0-9a-f]*\)".*/\1/p' "$root/flake.lock" | head -n1)
head_rev="unknown (not a git checkout)"
if [[ $(git -C "$checkout" rev-parse --show-toplevel 2>/dev/null) == "$checkout" ]]; then
  head_rev=$(git -C "$checkout" rev-parse HEAD)
fi
echo "checkout: $checkout at $head_rev"
echo "flake.lock pins nixpkgs at ${locked:-unknown}"
[[ $head_rev == "$locked" ]] || echo "note: the checkout is not at flake.lock's revision"

differs=0
uncompared=0
for path in "${paths[@]}"; do
  where=$(nix_eval "let s = (import $here/contract-sources.nix).options.\"$path\"; in \"\${s.file} @\${s.rev}\${if s.read then \"\" else \" (not read by hand)\"}\"" 2>&1) || {
    echo "NOT COMPARED $path: not in contract-sources.nix"
    uncompared=1
    continue
  }
  echo "== $path (contract copied from $where)"
  if ! report=$(nix_eval "import $here/sync-contract.nix { nixpkgs = $checkout; path = \"$path\"; }" 2>&1); then
    echo "NOT COMPARED $path: $(printf '%s\n' "$report" | grep -m1 'error:' || printf '%s\n' "$report" | head -n1)"
    uncompared=1
    continue
  fi
  printf '%s\n' "$report"
  grep -qE '^(DIFF|MISSING) ' <<<"$report" && differs=1
done

if ((uncompared)); then
  echo "some declarations could not be compared"
  exit 2
fi
if ((differs)); then
  echo "the contract differs from the checkout: update checks/modules/contract.nix (and contract-sources.nix)"
  exit 1
fi
echo "the contract agrees with the checkout"
