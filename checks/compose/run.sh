#!/usr/bin/env bash
# Runs the tests of lib.compose (nix/lib/compose) with `nix-instantiate
# --eval --strict`, from any directory:
#
#   checks/compose/run.sh [test-name...]
#
# - test-*.nix are `{ compose, composeWith, t, ... }: true` and run once per engine
#   ("fast" and "reference"): every behavioural case holds for both.
# - both-*.nix are `{ composeWith, ... }: true` and run once: they compare
#   the engines (both-generated: random declarations from seeds).
# - errors.nix holds the error cases: each is evaluated per engine and its
#   message must contain the expected words.
# A test whose function takes `lib` needs nixpkgs' lib (the module system):
# NIXPKGS_LIB, else ../shared/nixpkgs-lib/lib next to the repository where
# that exists (this project's CI machines have it there). Without either,
# such tests print NOT RUN and the others run. The last line is "N passed,
# M failed"; the exit status is 1 when a test failed, else 3 when a test
# could not run (so CI cannot pass without them), 2 for a bad NIXPKGS_LIB.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$here"

export NIX_CONFIG=$'substituters =\nbuild-users-group ='

shared_lib="$root/../shared/nixpkgs-lib/lib"
if [[ -n ${NIXPKGS_LIB:-} ]]; then
  if [[ ! -f $NIXPKGS_LIB/default.nix ]]; then
    echo "error: NIXPKGS_LIB=$NIXPKGS_LIB has no default.nix; point it at a nixpkgs checkout's lib/ directory" >&2
    exit 2
  fi
  lib_arg="import $(cd "$NIXPKGS_LIB" && pwd)"
elif [[ -f $shared_lib/default.nix ]]; then
  lib_arg="import $(cd "$shared_lib" && pwd)"
else
  lib_arg="null"
fi

if (($#)); then
  tests=()
  for name in "$@"; do tests+=("${name%.nix}.nix"); done
else
  tests=(test-*.nix both-*.nix errors.nix)
fi

passed=0
failed=0
not_run=0
engines=(fast reference)

pass() {
  echo "PASS $1"
  passed=$((passed + 1))
}
fail() {
  echo "FAIL $1"
  printf '%s\n' "$2" | sed 's/^/  /'
  failed=$((failed + 1))
}

# Evaluates `expr` (which sees `lib`, `composeWith` and `test`) and passes
# when it prints true.
run_eval() {
  local label=$1 expr=$2 out
  if out=$(nix-instantiate --eval --strict -E "
      let
        lib = $lib_arg;
        composeWith = settings: import $root/nix/lib/compose { inherit settings; };
      in $expr" 2>&1) && [[ $out == true ]]; then
    pass "$label"
  else
    fail "$label" "$out"
  fi
}

needs_lib() {
  [[ $(nix-instantiate --eval -E "(builtins.functionArgs (import $here/$1)) ? lib" 2>/dev/null) == true ]]
}

for test in "${tests[@]}"; do
  name=${test%.nix}
  if [[ ! -f $test ]]; then
    fail "$name" "no such test: checks/compose/$test"
    continue
  fi
  case $name in
    errors)
      count=$(nix-instantiate --eval --strict -E "builtins.length (builtins.attrNames (import $here/errors.nix))")
      mapfile -t cases < <(nix-instantiate --eval --strict --json -E "builtins.attrNames (import $here/errors.nix)" | tr -d '[]"' | tr ',' '\n')
      ((${#cases[@]} == count)) || fail errors "could not list the error cases"
      for case in "${cases[@]}"; do
        for engine in "${engines[@]}"; do
          expect=$(nix-instantiate --eval --strict --json -E "(import $here/errors.nix).\"$case\".expect" |
            sed -e 's/^"//' -e 's/"$//' -e 's/\\"/"/g' -e 's/\\\\/\\/g')
          if out=$(nix-instantiate --eval --strict -E "
              let
                compose = import $root/nix/lib/compose { settings.engine = \"$engine\"; };
                composeWith = settings: import $root/nix/lib/compose { settings = { engine = \"$engine\"; } // settings; };
                case = (import $here/errors.nix).\"$case\";
              in case.run { inherit compose composeWith; }" 2>&1); then
            fail "errors: $case [$engine]" "evaluated to $out; expected an error containing: $expect"
          elif [[ $out == *"$expect"* ]]; then
            pass "errors: $case [$engine]"
          else
            fail "errors: $case [$engine]" "expected the error to contain: $expect"$'\n'"$out"
          fi
        done
      done
      ;;
    both-*)
      if needs_lib "$test" && [[ $lib_arg == null ]]; then
        echo "NOT RUN $name (needs nixpkgs' lib: set NIXPKGS_LIB)"
        not_run=$((not_run + 1))
        continue
      fi
      run_eval "$name" "import $here/$test { inherit lib composeWith; }"
      ;;
    *)
      if needs_lib "$test" && [[ $lib_arg == null ]]; then
        echo "NOT RUN $name (needs nixpkgs' lib: set NIXPKGS_LIB)"
        not_run=$((not_run + 1))
        continue
      fi
      for engine in "${engines[@]}"; do
        run_eval "$name [$engine]" "
          import $here/$test {
            inherit lib;
            compose = composeWith { engine = \"$engine\"; };
            composeWith = settings: composeWith ({ engine = \"$engine\"; } // settings);
            t = import $here/lib.nix { engine = \"$engine\"; };
          }"
      done
      ;;
  esac
done

((not_run == 0)) || echo "$not_run test file(s) NOT RUN: they need nixpkgs' lib"
echo "$passed passed, $failed failed"
((failed == 0)) || exit 1
# Tests that could not run fail CI rather than pass without them.
((not_run == 0)) || exit 3
