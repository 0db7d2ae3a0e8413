#!/usr/bin/env bash
# Benchmark of `waymark converge` on simulated hosts (each with its own /nix, /run and
# sshd on 127.0.0.1: docs/testbed.md):
#   - the time from a hand switch on a host (`switch-to-configuration switch` there) to
#     the controller's report of it, over CHANGES switches (median and p99), with the
#     hosts' inotify watcher (`waymark host-watch`) and with the poll fallback (200 ms);
#   - the controller's CPU (itself and its watchers' ssh clients) while it watches HOSTS
#     hosts and nothing changes (goal: under 1 % of a core).
# The change's time is the link's own modification time on the host, the report's the
# controller's event time: both this machine's clock.
#
# Usage: bench/converge.sh [CHANGES] [HOSTS] [IDLE_SECONDS]   (defaults: 50, 20, 30)
# Needs root, nix-bin, busybox-static, openssh-server. Figures (JSON) also in
# $BENCH_DIR/converge.json (default target/bench-converge).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
changes=${1:-50}
hosts=${2:-20}
idle=${3:-30}
out=${BENCH_DIR:-$repo/target/bench-converge}
mkdir -p "$out"
lab=$(mktemp -d /tmp/wm-converge-bench.XXXXXX)
trap 'rm -rf "$lab"' EXIT

target=${CARGO_TARGET_DIR:-$repo/target}
cargo build --quiet --release --manifest-path "$repo/Cargo.toml" -p waymark -p waymark-testbed
"$target/release/waymark-converge-bench" --waymark "$target/release/waymark" \
  --dir "$lab" --hosts "$hosts" --changes "$changes" --idle "$idle" | tee "$out/converge.json"
