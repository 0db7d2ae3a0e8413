#!/usr/bin/env bash
# Benchmark of lib.compose (nix/lib/compose): both engines resolve the same
# generated fleet (checks/compose/generate.nix) of 50 hosts, 200 aspects and
# 20 policies, every host's module list, home modules and deploy declaration
# forced, with `nix-instantiate --eval --strict`. Reports per engine the
# median wall time of the whole command (hyperfine when it is on PATH, else a
# timing loop), the median evaluation CPU time Nix reports (NIX_SHOW_STATS),
# and the reference/fast ratios; checks first that both give the same result.
#
# Three shapes of the same size, by how many includes an aspect has at most
# and how many aspects a host lists: "dense" (10 and 12: ~140 aspects end
# up on a host, users' included), "medium" (6 and 8: ~50) and "sparse" (4
# and 5: ~30). Goal (issue 24): the fast engine under 1 s, 5x the reference.
#
# Usage: bench/compose.sh [RUNS]   (default 10 runs per engine and shape;
# needs nix-instantiate; no store writes, no network)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-10}
seed=${SEED:-1}
export NIX_CONFIG=$'substituters =\nbuild-users-group ='

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The fleet and what is forced; prints a digest of the result, so the two
# engines can be compared.
cat >"$work/fleet.nix" <<EOF
{ engine, fanout, roots }:
let
  declarations = import $repo/checks/compose/generate.nix {
    seed = $seed;
    hosts = 50;
    aspects = 200;
    policies = 20;
    users = 2;
    inherit fanout roots;
  };
  fleet = import $repo/nix/lib/compose { settings.engine = engine; } declarations;
  view = builtins.mapAttrs (_: h: {
    inherit (h) aspects deploy context home;
    modules = builtins.tail h.modules;
  }) fleet.hosts;
  placed = builtins.foldl' (n: h: n + builtins.length h.aspects) 0 (builtins.attrValues view);
in
builtins.deepSeq view "\${toString placed} \${builtins.hashString "sha256" (builtins.toJSON view)}"
EOF

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

eval_cmd() { # engine fanout roots
  echo "nix-instantiate --eval --strict --argstr engine $1 --arg fanout $2 --arg roots $3 $work/fleet.nix"
}

wall() { # engine fanout roots -> median seconds
  local cmd
  cmd=$(eval_cmd "$@")
  if command -v hyperfine >/dev/null; then
    hyperfine --runs "$runs" --warmup 1 --style none --export-json "$work/h.json" "$cmd" >/dev/null 2>&1
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['results'][0]['median'])" "$work/h.json"
    # The process's CPU (user + system, mean): less moved by a busy machine than wall time.
    python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['results'][0]; print(r['user'] + r['system'])" "$work/h.json" >"$work/proc_cpu"
  else
    for _ in $(seq "$runs"); do
      local t0 t1
      t0=$(date +%s%N)
      $cmd >/dev/null 2>&1
      t1=$(date +%s%N)
      echo "$(((t1 - t0) / 1000))e-6"
    done | awk '{printf "%.6f\n", $1}' | median
    echo nan >"$work/proc_cpu"
  fi
}

cpu() { # engine fanout roots -> median evaluation CPU seconds
  local cmd
  cmd=$(eval_cmd "$@")
  for _ in $(seq "$runs"); do
    NIX_SHOW_STATS=1 NIX_SHOW_STATS_PATH="$work/stats.json" $cmd >/dev/null 2>&1
    python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['cpuTime'])" "$work/stats.json"
  done | median
}

echo "lib.compose: 50 hosts, 200 aspects, 20 policies (seed $seed), $runs runs each"
echo "tool: $(command -v hyperfine >/dev/null && echo hyperfine || echo 'timing loop') for wall time; NIX_SHOW_STATS cpuTime for evaluation"
startup=$(
  runs=$runs
  cmd="nix-instantiate --eval -E 1"
  for _ in $(seq "$runs"); do
    t0=$(date +%s%N)
    $cmd >/dev/null 2>&1
    t1=$(date +%s%N)
    echo "$(((t1 - t0) / 1000))e-6"
  done | awk '{printf "%.6f\n", $1}' | median
)
echo "nix-instantiate startup (eval of 1): ${startup} s"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) (wall time needs an idle machine; the CPU columns less so)"
printf '%-7s %-10s %8s %8s %10s %10s\n' shape engine aspects wall_s process_cpu eval_cpu_s
for shape in "dense 10 12" "medium 6 8" "sparse 4 5"; do
  read -r name fanout roots <<<"$shape"
  fast_out=$($(eval_cmd fast "$fanout" "$roots") 2>/dev/null)
  ref_out=$($(eval_cmd reference "$fanout" "$roots") 2>/dev/null)
  if [[ $fast_out != "$ref_out" ]]; then
    echo "the engines disagree on the $name fleet: fast $fast_out, reference $ref_out" >&2
    exit 1
  fi
  placed=$(tr -d '"' <<<"$fast_out" | cut -d' ' -f1)
  declare -A w p c
  for engine in fast reference; do
    w[$engine]=$(wall "$engine" "$fanout" "$roots")
    p[$engine]=$(cat "$work/proc_cpu")
    c[$engine]=$(cpu "$engine" "$fanout" "$roots")
    printf '%-7s %-10s %8s %8.3f %10.3f %10.3f\n' "$name" "$engine" "$placed" "${w[$engine]}" "${p[$engine]}" "${c[$engine]}"
  done
  python3 -c "import sys; v=[float(x) for x in sys.argv[1:7]]; print(f'{sys.argv[7]:<7} reference/fast: wall {v[1]/v[0]:.1f}x, process CPU {v[3]/v[2]:.1f}x, evaluation CPU {v[5]/v[4]:.1f}x')" \
    "${w[fast]}" "${w[reference]}" "${p[fast]}" "${p[reference]}" "${c[fast]}" "${c[reference]}" "$name"
  unset w p c
done
