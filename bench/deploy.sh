#!/usr/bin/env bash
# Benchmark of `waymark deploy` on simulated hosts (each with its own /nix, /run and sshd
# on 127.0.0.1: docs/testbed.md), beside deploy-rs 1.0.0 on the same kind of hosts, in one run:
#   - one host, all five gates, a new closure each run (built on the build host);
#   - a no-change redeploy (the closure runs and is known-good);
#   - fleets of 5, 10 and 20 hosts with --parallel equal to their size, and 1;
#   - deploy-rs (its measuring recipe's measure.sh, outside this repository: PEER below):
#     one host, and 5 hosts --targets.
# Both tools are measured in two login profiles, each applied to both alike:
#   stock       this machine as it is: root's ~/.bashrc runs `pyenv init` in every SSH
#               session (~0.13 s of CPU each) and OpenSSH 9.2 negotiates the costly
#               sntrup761x25519 key exchange (~0.1 s of CPU per connection);
#   nixos-like  what a NixOS 26.05 host and deployer do instead: no ~/.bashrc for root
#               (masked in a private mount namespace that the hosts inherit), and a
#               cheap key exchange (curve25519-sha256 stands in for OpenSSH 10's default
#               mlkem768x25519-sha256, which this OpenSSH lacks).
# Prints medians and ratios, and the CPU of the deploying side alone (a cgroup holds the
# deployer and what it starts; the simulated hosts share this machine's cores, real ones
# do not); the raw figures stay in $BENCH_DIR/<profile> (default target/bench-deploy).
#
# Usage: bench/deploy.sh [RUNS] [FLEETS]   (defaults: 3 runs, fleets 5,10,20)
# Needs root, nix-bin, busybox-static, openssh-server, jq, bc (deploy-rs's recipe also
# builds deploy-rs with cargo once). DEPLOYRS_DIR (default /tmp/deployrs-peer) and PEER
# (default ../shared/peers/deploy-rs) locate the peer; SKIP_PEER=1 skips it; PROFILES
# (default "stock nixos-like") chooses the profiles.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
fleets=${2:-5,10,20}
bench_root=${BENCH_DIR:-$repo/target/bench-deploy}
peer=${PEER:-$repo/../shared/peers/deploy-rs}
export DEPLOYRS_DIR=${DEPLOYRS_DIR:-/tmp/deployrs-peer}
export NIX_CONFIG=$'substituters =\nexperimental-features = nix-command flakes\nbuild-users-group ='
kex=curve25519-sha256

cargo build --quiet --release --manifest-path "$repo/Cargo.toml" -p waymark -p waymark-testbed

# in_profile PROFILE CMD...: runs CMD (and the hosts it starts) in the profile.
in_profile() {
  local profile=$1; shift
  local rc; rc=$(getent passwd root | cut -d: -f6)/.bashrc
  if [[ $profile == nixos-like && -e $rc ]]; then
    local empty; empty=$(mktemp)
    unshare -m --propagation private -- sh -c 'mount --bind "$0" "$1" && shift && exec "$@"' "$empty" "$rc" "$@"
  else
    "$@"
  fi
}

# measure PROFILE: both tools, figures in $bench_root/PROFILE.
measure() {
  local profile=$1 bench_dir=$bench_root/$1 opts=()
  [[ $profile == nixos-like ]] && opts=(--ssh-option "KexAlgorithms $kex")
  rm -rf "$bench_dir" && mkdir -p "$bench_dir"
  echo "== $profile: waymark, $runs runs per figure, fleets $fleets (progress below)" >&2
  in_profile "$profile" "$repo/target/release/waymark-deploy-bench" --waymark "$repo/target/release/waymark" \
    --dir "$bench_dir/lab" --runs "$runs" --fleets "$fleets" "${opts[@]}" > "$bench_dir/waymark.json"

  local dr_one=nan dr_five=nan
  if [[ ${SKIP_PEER:-} != 1 && -x $peer/measure.sh ]]; then
    [[ -x $DEPLOYRS_DIR/tools/bin/deploy ]] || "$peer/recipe.sh" 5 >&2
    # The peer's hosts read its ssh config; the profile's key exchange goes last.
    sed -i '/^# waymark-bench profile$/,$d' "$DEPLOYRS_DIR/ssh/config"
    [[ $profile == nixos-like ]] && printf '# waymark-bench profile\nHost *\n  KexAlgorithms %s\n' "$kex" >> "$DEPLOYRS_DIR/ssh/config"
    echo "== $profile: deploy-rs, measure.sh (about 3 minutes)" >&2
    in_profile "$profile" "$peer/measure.sh" > "$bench_dir/deploy-rs.txt" 2>&1 || true
    DEPLOYRS_DIR=$DEPLOYRS_DIR "$peer/cleanup.sh" > /dev/null 2>&1 || true
    sed -i '/^# waymark-bench profile$/,$d' "$DEPLOYRS_DIR/ssh/config"
    # Only deploys that succeeded count (measure.sh's own status does not say).
    med() { awk -F'\t' -v l="$1" '$1==l && $2==0 {print $3}' "$DEPLOYRS_DIR/results/times.tsv" | sort -n |
      awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]; else print "nan"}'; }
    dr_one=$(med 1h-changed) dr_five=$(med 5h-targets-changed)
    cp "$DEPLOYRS_DIR/results/times.tsv" "$bench_dir/deploy-rs-times.tsv"
  fi
  report "$profile" "$bench_dir" "$dr_one" "$dr_five" | tee "$bench_dir/summary.txt"
}

report() {
  local profile=$1 bench_dir=$2 dr_one=$3 dr_five=$4
  echo "== $profile"
jq -r --arg dr1 "$dr_one" --arg dr5 "$dr_five" '
  def r(x): (x * 100 | round) / 100;
  def ratio(a; b): if (b | tonumber? // null) == null then "n/a" else "\(r(a / (b | tonumber)))x" end;
  def cpu(s): if s == null then "not measured (no cgroup v2)" else "\(r(s)) s" end;
  # How busy every core was over a run (the deploying side and the simulated hosts):
  # near 100% the run was bound by CPU, which real hosts would not share.
  def busy(m; wall; cores): if m == null then "" else "; the machine'"'"'s CPU \(r(m)) s, its \(cores) cores \(m / (cores * wall) * 100 | round)% busy" end;
  def per_host(s; n; one): if s == null or one == null or n < 2 then "" else ", \((s - one) * 1000 / (n - 1) | round) ms for each host beyond the first" end;
  .single as $s | (.cores // 1) as $cores | (.fleets | map(select(.parallel == .hosts))) as $par |
  "one host, every gate (median of \($s.runs | length)): \(r($s.median_wall_s)) s" +
  " = eval \(r($s.median_eval_s)) + Nix build/copy \(r($s.median_nix_s)) + on the hosts \(r($s.median_remote_s))" +
  " (overlapping); waymark'"'"'s own CPU \(r($s.median_own_cpu_s)) s = \(r($s.median_own_cpu_s / $s.median_wall_s * 100))% of the wall time",
  "  ssh connections opened: \($s.runs[0].ssh_connections) (the target'"'"'s master and the confirmation'"'"'s, the build host'"'"'s master)",
  "  the deploying side'"'"'s CPU (waymark, its ssh clients, nix commands and relays; not the hosts'"'"'): \(cpu($s.median_deployer_cpu_s))\(busy($s.median_machine_cpu_s; $s.median_wall_s; $cores))",
  "  deploy-rs 1.0.0, one host (1h-changed): \($dr1) s  -> waymark/deploy-rs = \(ratio($s.median_wall_s; $dr1))",
  "no-change redeploy: \(r(.unchanged_median_wall_s)) s",
  (.fleets[] | "fleet of \(.hosts), --parallel \(.parallel): \(r(.wall_s)) s (\(r(.wall_s / $s.median_wall_s))x one host; at most \(.max_ssh_connections_per_host) connections opened by one host'"'"'s deploy; the deploying side'"'"'s CPU \(cpu(.deployer_cpu_s))\(per_host(.deployer_cpu_s; .hosts; $s.median_deployer_cpu_s))\(busy(.machine_cpu_s; .wall_s; $cores)))"),
  ($par[] | select(.hosts == 5) | "  deploy-rs --targets, 5 hosts (5h-targets-changed): \($dr5) s -> waymark/deploy-rs = \(ratio(.wall_s; $dr5))")
' "$bench_dir/waymark.json"
}

for profile in ${PROFILES:-stock nixos-like}; do measure "$profile"; done
