#!/usr/bin/env bash
# Benchmark of `waymark serve` (release build, as shipped) on loopback, one run:
#   1. submit latency: `oha` (a Rust HTTP load generator, installed with
#      `cargo install --locked oha` when it is not on PATH) sends job submissions at a
#      fixed 500 requests/s for DURATION seconds (default 10) spread evenly over 900
#      deployments (q100 to q999) that each have a queued job (mode queue: every
#      submission supersedes that job, a write transaction); prints p50/p99/max and the
#      status codes. (oha draws each alternative of a URL pattern evenly: the former
#      q(0|[1-9][0-9]{0,2}) sent half of all submissions to q0, and submissions to one
#      deployment decide one after another by design);
#   2. recovery: 10,000 deployments with a queued job each, then `kill -9` of the service
#      while submissions go on; the time from the restart's exec to the first answer of
#      /v1/queue that counts all 10,000 queued jobs;
#   3. SSE resume: a client of /v1/events reads 1 to 6 events, drops the connection and
#      resumes with Last-Event-ID, 100 times, while jobs are submitted; every event id it
#      saw is compared with the JSON polling list: lost, duplicated, in order.
# The service runs with --workers 0 (accept, run nothing): these are the queue's figures,
# not a deploy's. Raw output stays in $BENCH_DIR (default target/bench-serve).
#
# Usage: bench/serve.sh   (DURATION=SECONDS, RATE=REQUESTS_PER_SECOND to change them)
# DATABASE=postgres://… runs it on that (empty) PostgreSQL database instead of SQLite, and
# REPLICAS=N with N replicas sharing it: submissions spread over their ports, the first
# is the one killed. bench/serve-backends.sh runs SQLite, one and three replicas.
set -euo pipefail
cd "$(dirname "$0")/.."

out=${BENCH_DIR:-target/bench-serve}
duration=${DURATION:-10}
rate=${RATE:-500}
mkdir -p "$out"
target=${CARGO_TARGET_DIR:-target}

cargo build --release --locked -p waymark --no-default-features >&2
waymark=$target/release/waymark
oha=${OHA:-$(command -v oha || true)}
if [[ -z $oha ]]; then
  cargo install --locked oha --root "$out/tools" >&2
  oha=$out/tools/bin/oha
fi

state=$(mktemp -d)
pid=
extra_pids=()
db_args=()
[[ -n ${DATABASE:-} ]] && db_args=(--database "$DATABASE")
replicas=${REPLICAS:-1}
cleanup() {
  [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
  for p in "${extra_pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$state"
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base=http://127.0.0.1:$port
# --rand-regex-url reads the URL as a regular expression: its dots as [.].
rbase=${base//./[.]}
ports=("$port")
for ((i = 1; i < replicas; i++)); do
  ports+=("$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')")
done
if ((replicas > 1)); then
  rbase="http://127[.]0[.]0[.]1:($(IFS='|'; echo "${ports[*]}"))"
fi

start() {
  "$waymark" serve --quiet --listen "127.0.0.1:$port" --state-dir "$state/s" --workers 0 \
    "${db_args[@]}" 2>>"$out/serve.log" &
  pid=$!
  # The other replicas share the state directory (its token) and the database.
  for p in "${ports[@]:1}"; do
    "$waymark" serve --quiet --listen "127.0.0.1:$p" --state-dir "$state/s" --workers 0 \
      "${db_args[@]}" 2>>"$out/serve.log" &
    extra_pids+=($!)
  done
}
wait_up() {
  for _ in $(seq 1 500); do
    curl -fsS "$base/healthz" >/dev/null 2>&1 && return 0
    sleep 0.02
  done
  echo "the service did not start (see $out/serve.log)" >&2
  exit 1
}

start
wait_up
for p in "${ports[@]:1}"; do
  until curl -fsS "http://127.0.0.1:$p/healthz" >/dev/null 2>&1; do sleep 0.02; done
done
token=$(cat "$state/s/token")
echo "filling: 10,000 deployments with a queued job each" >&2
bench/serve-client.py fill "$base" "$token" 10000

# 1. Submissions at a fixed rate.
"$oha" --no-tui --output-format json -q "$rate" -z "${duration}s" -c 32 -m POST \
  -H "Authorization: Bearer $token" -T application/json \
  -d '{"rev":"0123456789abcdef0123456789abcdef01234567","mode":"queue"}' \
  --latency-correction --rand-regex-url "$rbase/v1/deployments/q[1-9][0-9]{2}/jobs" >"$out/submit.json"
python3 - "$out/submit.json" "$rate" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
p = r["latencyPercentiles"]
codes = r.get("statusCodeDistribution", {})
print(f"submit at {sys.argv[2]}/s: {r['summary']['requestsPerSec']:.0f} req/s answered, "
      f"p50 {p['p50']*1000:.2f} ms, p99 {p['p99']*1000:.2f} ms, max {r['summary']['slowest']*1000:.2f} ms, "
      f"status {codes}")
PY

# 2. kill -9 under load, then the restart's recovery.
"$oha" --no-tui -q 200 -z 3s -c 8 -m POST -H "Authorization: Bearer $token" -T application/json \
  -d '{"rev":"0123456789abcdef0123456789abcdef01234568","mode":"queue"}' \
  --rand-regex-url "$rbase/v1/deployments/q[1-9][0-9]{2}/jobs" >/dev/null 2>&1 &
load=$!
sleep 1.5
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
wait "$load" 2>/dev/null || true
python3 - "$waymark" "$port" "$state/s" "$token" "$out/serve.log" "${db_args[@]}" <<'PY'
import http.client, json, subprocess, sys, time
waymark, port, state, token, log = sys.argv[1:6]
t0 = time.monotonic()
p = subprocess.Popen([waymark, "serve", "--quiet", "--listen", f"127.0.0.1:{port}",
                      "--state-dir", state, "--workers", "0"] + sys.argv[6:], stderr=open(log, "a"))
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
        c.request("GET", "/v1/queue", headers={"Authorization": f"Bearer {token}"})
        r = c.getresponse()
        body = json.loads(r.read())
        queued = sum(k["queued"] for k in body["classes"])
        if r.status == 200 and queued >= 10000:
            break
    except (OSError, http.client.HTTPException):
        pass
    time.sleep(0.002)
elapsed = time.monotonic() - t0
print(f"recovery after kill -9: {queued} queued jobs served {elapsed*1000:.0f} ms after the restart's exec")
open(state + "/../pid", "w").write(str(p.pid))
PY
pid=$(cat "$state/pid")

# 3. SSE resume.
sse_bases=$(printf 'http://127.0.0.1:%s,' "${ports[@]}")
bench/serve-client.py sse "${sse_bases%,}" "$token" 100
