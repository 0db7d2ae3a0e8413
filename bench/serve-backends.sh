#!/usr/bin/env bash
# bench/serve.sh three times in one run, for figures side by side: SQLite, then
# PostgreSQL with one replica, then with three replicas sharing the database (each on an
# empty database of a throw-away PostgreSQL 15 cluster that .ci/services.sh starts, and
# stops at the end). Usage: bench/serve-backends.sh   (DURATION, RATE as bench/serve.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/services.sh
new_db() {
  local name=bench_$1_$$
  psql -q "$WAYMARK_TEST_POSTGRES" -c "CREATE DATABASE $name" >/dev/null
  local head=${WAYMARK_TEST_POSTGRES%%\?*}
  echo "${head%/*}/$name?${WAYMARK_TEST_POSTGRES#*\?}"
}
echo "== SQLite"
BENCH_DIR=target/bench-serve/sqlite bench/serve.sh
echo "== PostgreSQL, 1 replica"
BENCH_DIR=target/bench-serve/pg1 DATABASE=$(new_db one) bench/serve.sh
echo "== PostgreSQL, 3 replicas"
BENCH_DIR=target/bench-serve/pg3 DATABASE=$(new_db three) REPLICAS=3 bench/serve.sh
