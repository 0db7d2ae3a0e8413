#!/usr/bin/env bash
# deploy-rs 1.0.0 on one simulated host, a changed closure each run (its measuring
# recipe's `1h-changed`), with every ssh connection it and its `nix copy` open going
# through bench/latency-proxy.py at each DELAY given, the delays taken in turn run after
# run so that the machine's load weighs on each alike. bench/deploy.sh's latency mode
# runs it, in its login profile, beside waymark.
#
# Usage: PEER=DIR bench/deploy-rs-latency.sh RUNS DELAY...
# Needs the recipe's work directory made (DEPLOYRS_DIR, its recipe.sh); appends
# "1h-changed@DELAY<TAB>rc<TAB>seconds<TAB>ssh connections..." lines to
# $DEPLOYRS_DIR/results/times.tsv (emptied first), the proxy's logs of the delayed runs
# beside it, and progress to stdout.
set -uo pipefail
bench=$(cd "$(dirname "$0")" && pwd)
runs=$1; shift
# shellcheck source=/dev/null
source "${PEER:?PEER must name the directory of the deploy-rs measuring recipe}/env.sh"
# shellcheck source=/dev/null
source "$R/lib.sh"
cfg=$R/ssh/config

# proxy DELAY [LOG]: every host of the recipe's ssh config through the proxy (after the
# hosts' blocks: ssh takes the first value it reads), logging to LOG if given.
proxy() {
  sed -i '/^# waymark-bench latency$/,$d' "$cfg"
  printf '# waymark-bench latency\nHost *\n  ProxyCommand /usr/bin/python3 %s/latency-proxy.py %%p %s --name %%n%s\n' \
    "$bench" "$1" "${2:+ --log $2}" >> "$cfg"
}
trap 'sed -i "/^# waymark-bench latency\$/,\$d" "$cfg"' EXIT

: > "$RES/times.tsv"
fresh_hosts dr1
write_cfg dr1
n=0
bump() { n=$((n + 1)); set_host dr1 salt "latency$n-$(date +%s%N)"; }
# The first deploy copies the whole closure: not measured.
proxy "$1"; bump; run_deploy warmup dr1 .#dr1
# Each delayed run's connections logged apart (deploy-rs's do not overlap: one log is
# one deploy): $RES/proxy-1h-changed@DELAY-RUN.log.
rm -f "$RES"/proxy-*.log
for run in $(seq "$runs"); do
  for delay in "$@"; do
    log=; [[ $delay != 0 ]] && log=$RES/proxy-1h-changed@$delay-$run.log
    proxy "$delay" "$log"; bump; run_deploy "1h-changed@$delay" dr1 .#dr1
  done
done
$R/host-down.sh dr1 > /dev/null 2>&1 || true
