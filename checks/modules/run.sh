# Runs the module tests (checks/modules/test-*.nix) with nixpkgs' lib and
# nothing else of nixpkgs: each must evaluate to true with
# `nix-instantiate --eval --strict`. First checks that every .nix file of
# the repository's Nix parts parses; last runs the script tests
# (checks/modules/test-*.sh), each of which must exit 0.
#
#   checks/modules/run.sh [test-name...]
#   NIXPKGS_LIB=/path/to/nixpkgs/lib checks/modules/run.sh [test-name...]
#
# nixpkgs' lib (a directory holding lib/default.nix) comes from NIXPKGS_LIB,
# else from ../shared/nixpkgs-lib/lib next to the repository where that
# exists (this project's CI machines have it there). Without either nothing
# runs: the script says NOT RUN and exits 3, so CI cannot pass without the
# tests. The last line of a run is "N passed, M failed"; the exit status is 1
# when a test failed.
set -uo pipefail
cd "$(dirname "$0")"
root=$(cd ../.. && pwd)

export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes\nbuild-users-group ='

if (($#)); then
  tests=()
  scripts=()
  for name in "$@"; do
    name=${name%.nix}
    name=${name%.sh}
    if [[ -f $name.sh ]]; then scripts+=("$name.sh"); else tests+=("$name.nix"); fi
  done
else
  tests=(test-*.nix)
  scripts=(test-*.sh)
fi

shared_lib="$root/../shared/nixpkgs-lib/lib"
if [[ -n ${NIXPKGS_LIB:-} ]]; then
  if [[ ! -f $NIXPKGS_LIB/default.nix ]]; then
    echo "error: NIXPKGS_LIB=$NIXPKGS_LIB has no default.nix; point it at a nixpkgs checkout's lib/ directory" >&2
    exit 2
  fi
elif [[ -f $shared_lib/default.nix ]]; then
  NIXPKGS_LIB=$(cd "$shared_lib" && pwd)
  echo "using nixpkgs' lib from $NIXPKGS_LIB" >&2
else
  echo "NOT RUN: module evaluation tests need nixpkgs' lib (set NIXPKGS_LIB, or put it at ../shared/nixpkgs-lib/lib); 0 of $((${#tests[@]} + ${#scripts[@]} + 1)) ran"
  exit 3
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

# Script tests (test-*.sh), e.g. sync-contract.sh against fake checkouts.
for script in "${scripts[@]}"; do
  if out=$(NIXPKGS_LIB=$NIXPKGS_LIB "./$script" 2>&1); then
    echo "PASS ${script%.sh}"
    passed=$((passed + 1))
  else
    echo "FAIL ${script%.sh}"
    printf '%s\n' "$out" | sed 's/^/  /'
    failed=$((failed + 1))
  fi
done

echo "$passed passed, $failed failed"
((failed == 0))
