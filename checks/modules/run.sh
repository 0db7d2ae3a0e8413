#!/usr/bin/env bash
# Runs the module tests (checks/modules/test-*.nix) with nixpkgs' lib and
# nothing else of nixpkgs: each must evaluate to true with
# `nix-instantiate --eval --strict`. First checks that every .nix file of
# the repository's Nix parts parses.
#
#   NIXPKGS_LIB=/path/to/nixpkgs/lib checks/modules/run.sh [test-name...]
#
# Without NIXPKGS_LIB (a directory holding nixpkgs' lib/default.nix) nothing
# runs and nothing is claimed. The last line is "N passed, M failed"; the
# exit status is 1 when a test failed.
set -uo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)

export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes\nbuild-users-group ='

if (($#)); then
  tests=()
  for name in "$@"; do tests+=("${name%.nix}.nix"); done
else
  tests=(test-*.nix)
fi

if [[ -z ${NIXPKGS_LIB:-} || ! -f ${NIXPKGS_LIB:-}/default.nix ]]; then
  echo "NOT RUN: module evaluation tests need nixpkgs' lib (set NIXPKGS_LIB); 0 of $((${#tests[@]} + 1)) ran"
  exit 0
fi

passed=0
failed=0

# Every .nix file Waymark's Nix is made of, fixtures included, must parse.
parse_errors=""
while IFS= read -r -d '' file; do
  if ! out=$(nix-instantiate --parse "$file" 2>&1 >/dev/null); then
    parse_errors+="  ${file#"$root"/}: $out"$'\n'
  fi
done < <(find "$root/flake.nix" "$root/modules" "$root/hosts" "$root/templates" "$root/checks" "$root/nix" -name '*.nix' -print0)
if [[ -z $parse_errors ]]; then
  echo "PASS parse (every .nix file)"
  passed=$((passed + 1))
else
  echo "FAIL parse (every .nix file)"
  printf '%s' "$parse_errors"
  failed=$((failed + 1))
fi

for test in "${tests[@]}"; do
  if out=$(nix-instantiate --eval --strict \
    --arg lib "import $NIXPKGS_LIB" \
    -E "{ lib }: import ./$test { inherit lib; }" 2>&1) && [[ $out == true ]]; then
    echo "PASS ${test%.nix}"
    passed=$((passed + 1))
  else
    echo "FAIL ${test%.nix}"
    printf '%s\n' "$out" | sed 's/^/  /'
    failed=$((failed + 1))
  fi
done

echo "$passed passed, $failed failed"
((failed == 0))
