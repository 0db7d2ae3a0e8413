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
# Latency mode (LATENCY=SECONDS, e.g. 0.05): both tools again, every ssh connection of
# theirs (and of their `nix copy`) through bench/latency-proxy.py, which delays each way by
# LATENCY; the build host stays near the deployer, undelayed, as deploy-rs builds on the
# deploying machine (DISTANT_BUILDER=1 delays it too). Each tool once through the proxy at
# no delay and once at LATENCY: one host (waymark and deploy-rs), the fleets (waymark,
# FLEETS default 20) and the round trips on one host's critical path, counted two ways:
# the wall time LATENCY added over 2 x LATENCY, and the proxy's log of the connections
# and turns (bench/latency-turns.py). Figures in $BENCH_DIR/latency-<profile>.
#
# Usage: bench/deploy.sh [RUNS] [FLEETS]   (defaults: 3 runs, fleets 5,10,20)
#        LATENCY=0.05 bench/deploy.sh [RUNS] [FLEETS]   (fleets default 20)
# Needs root, nix-bin, busybox-static, openssh-server, jq, bc (deploy-rs's recipe also
# builds deploy-rs with cargo once). DEPLOYRS_DIR (default /tmp/deployrs-peer) and PEER
# (default ../shared/peers/deploy-rs) locate the peer; SKIP_PEER=1 skips it; PROFILES
# (default "stock nixos-like") chooses the profiles.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
latency=${LATENCY:-}
if [[ -n $latency ]]; then fleets=${2:-20}; else fleets=${2:-5,10,20}; fi
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

# measure_latency PROFILE: both tools through the proxy, figures in
# $bench_root/latency-PROFILE.
measure_latency() {
  local profile=$1 bench_dir=$bench_root/latency-$1 opts=() near=(--near builder)
  [[ $profile == nixos-like ]] && opts=(--ssh-option "KexAlgorithms $kex")
  [[ ${DISTANT_BUILDER:-} == 1 ]] && near=()
  local proxy="/usr/bin/python3 $repo/bench/latency-proxy.py %p"
  rm -rf "$bench_dir" && mkdir -p "$bench_dir"
  uptime > "$bench_dir/load.txt"
  echo "== $profile, latency: waymark through the proxy at no delay, $runs runs" >&2
  in_profile "$profile" "$repo/target/release/waymark-deploy-bench" --waymark "$repo/target/release/waymark" \
    --dir "$bench_dir/lab0" --runs "$runs" --fleets 1 "${opts[@]}" \
    --ssh-option "ProxyCommand $proxy 0 --name %n" > "$bench_dir/waymark-0.json"
  echo "== $profile, latency: waymark at $latency s each way, $runs runs, fleets $fleets" >&2
  in_profile "$profile" "$repo/target/release/waymark-deploy-bench" --waymark "$repo/target/release/waymark" \
    --dir "$bench_dir/lab" --runs "$runs" --fleets "$fleets" "${opts[@]}" \
    --ssh-option "ProxyCommand $proxy $latency --name %n ${near[*]} --log $bench_dir/proxy.log" \
    > "$bench_dir/waymark.json"
  # The first deploys of that run are the one-host ones.
  python3 "$repo/bench/latency-turns.py" "$bench_dir/proxy.log" --first "$runs" > "$bench_dir/turns.json"

  local dr0=nan drd=nan dr_conns=nan
  if [[ ${SKIP_PEER:-} != 1 && -f $peer/env.sh ]]; then
    [[ -x $DEPLOYRS_DIR/tools/bin/deploy ]] || "$peer/recipe.sh" 5 >&2
    sed -i '/^# waymark-bench profile$/,$d' "$DEPLOYRS_DIR/ssh/config"
    [[ $profile == nixos-like ]] && printf '# waymark-bench profile\nHost *\n  KexAlgorithms %s\n' "$kex" >> "$DEPLOYRS_DIR/ssh/config"
    echo "== $profile, latency: deploy-rs, one host, at no delay and at $latency s, $runs runs each" >&2
    in_profile "$profile" env PEER="$peer" "$repo/bench/deploy-rs-latency.sh" "$runs" 0 "$latency" \
      > "$bench_dir/deploy-rs.txt" 2>&1 || true
    sed -i '/^# waymark-bench profile$/,$d' "$DEPLOYRS_DIR/ssh/config"
    med() { awk -F'\t' -v l="$1" -v c="${2:-3}" '$1==l && $2==0 {print $c}' "$DEPLOYRS_DIR/results/times.tsv" | sort -n |
      awk '{v[NR]=$1} END {if (NR) print v[int((NR+1)/2)]; else print "nan"}'; }
    dr0=$(med "1h-changed@0") drd=$(med "1h-changed@$latency") dr_conns=$(med "1h-changed@$latency" 4)
    cp "$DEPLOYRS_DIR/results/times.tsv" "$bench_dir/deploy-rs-times.tsv"
    for log in "$DEPLOYRS_DIR/results/proxy-1h-changed@$latency"-*.log; do
      [[ -f $log ]] && python3 "$repo/bench/latency-turns.py" "$log" --one
    done | jq -s 'map(.[0])' > "$bench_dir/deploy-rs-turns.json"
  fi
  [[ -f $bench_dir/deploy-rs-turns.json ]] || echo '[]' > "$bench_dir/deploy-rs-turns.json"
  uptime >> "$bench_dir/load.txt"
  report_latency "$profile" "$bench_dir" "$dr0" "$drd" "$dr_conns" | tee "$bench_dir/summary.txt"
}

report_latency() {
  local profile=$1 bench_dir=$2
  jq -nr --arg profile "$profile" --arg d "$latency" --arg dr0 "$3" --arg drd "$4" --arg drc "$5" \
    --arg near "${DISTANT_BUILDER:-0}" --arg load "$(sed 's/.*load average: //' "$bench_dir/load.txt" | paste -sd';')" \
    --slurpfile z "$bench_dir/waymark-0.json" --slurpfile w "$bench_dir/waymark.json" \
    --slurpfile t "$bench_dir/turns.json" --slurpfile rt "$bench_dir/deploy-rs-turns.json" '
  def r(x): (x * 100 | round) / 100;
  def num(s): s | tonumber? // null;
  def med(a): (a | sort) as $s | if ($s | length) == 0 then null else $s[(($s | length) - 1) / 2 | floor] end;
  def s(x): if x == null then "n/a" else "\(r(x)) s" end;
  ($d | tonumber) as $d | ($d * 2000 | round) as $rtt_ms |
  $z[0].single.median_wall_s as $w0 | $w[0].single.median_wall_s as $wd |
  num($dr0) as $r0 | num($drd) as $rd |
  ($w[0].fleets | map(select(.parallel == .hosts and .hosts > 1))) as $par |
  ($w[0].fleets | map(select(.parallel == 1 and .hosts > 1))) as $seq |
  "== \($profile), \($d * 1000 | round) ms each way (\($rtt_ms) ms round trips) on the links to the targets; the build host \(if $near == "1" then "as far" else "beside the deployer (undelayed)" end); load average (1, 5, 15 min) before;after: \($load)",
  "",
  "| median of \($w[0].single.runs | length) | waymark | deploy-rs 1.0.0 | waymark / deploy-rs |",
  "|---|---|---|---|",
  "| one host, through the proxy, no delay | \(s($w0)) | \(s($r0)) | \(if $r0 then "\(r($w0 / $r0))x" else "n/a" end) |",
  "| one host, \($rtt_ms) ms round trips | \(s($wd)) | \(s($rd)) | \(if $rd then "**\(r($wd / $rd))x** (goal <= 0.6x)" else "n/a" end) |",
  def seq(a): med(a | map(.sequential_round_trips)) // "n/a";
  "| round trips in sequence over the delayed links (the proxy'"'"'s log) | \(seq($t[0])) | \(seq($rt[0])) | |",
  "| time added / \($rtt_ms) ms (less where work overlapped the waits) | \(($wd - $w0) / (2 * $d) | round) | \(if $rd and $r0 then (($rd - $r0) / (2 * $d) | round) else "n/a" end) | |",
  "| ssh connections, one host | \($w[0].single.runs[0].ssh_connections) (the target'"'"'s master and confirmation, the build host'"'"'s master) | \($drc) | |",
  ($par[] as $f | "| \($f.hosts) hosts, --parallel \($f.parallel), \($rtt_ms) ms | \(s($f.wall_s)) = **\(r($f.wall_s / $wd))x** one host (goal <= 2x) | | |"),
  ($seq[] as $f | "| \($f.hosts) hosts, --parallel 1, \($rtt_ms) ms | \(s($f.wall_s)) = \(r($f.wall_s / $wd))x one host | | |"),
  "",
  "waymark, one host at \($rtt_ms) ms, from the proxy'"'"'s log (median of \($t[0] | length) deploys): \(med($t[0] | map(.delayed_connections))) connections over the delayed links, \(med($t[0] | map(.delayed_turns))) turns on them (a request waiting for an answer), \(med($t[0] | map(.sequential_round_trips))) of them one after the other; data in flight \(med($t[0] | map(.in_flight_round_trips))) round trips of the wall time. The first deploy'"'"'s connections:",
  ($t[0][0].per_connection[] | "  \(.host)\(if .delayed then "" else " (undelayed)" end): opened at \(.opened_at_s) s for \(.open_for_s) s, \(.turns) turns, \(.bytes_out) bytes out, \(.bytes_in) in"),
  ($w[0].fleets[] | select(.hosts > 1) | "  \(.hosts) hosts --parallel \(.parallel): the deploying side'"'"'s CPU \(r(.deployer_cpu_s // 0)) s (one host: \(r($w[0].single.median_deployer_cpu_s // 0)) s), the machine'"'"'s \(r(.machine_cpu_s // 0)) s over \(r(.wall_s)) s (\((.machine_cpu_s // 0) / (($w[0].cores // 1) * .wall_s) * 100 | round)% of its \($w[0].cores) cores)")
'
}

for profile in ${PROFILES:-stock nixos-like}; do
  if [[ -n $latency ]]; then measure_latency "$profile"; else measure "$profile"; fi
done
