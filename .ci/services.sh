# Sourced by .ci/run: the servers the service's tests use, started for the run and
# stopped when it ends (an EXIT trap).
# - a throw-away PostgreSQL 15 cluster owned by the `postgres` user (initdb refuses root),
#   on a unix socket in a temporary directory and a port of its own, no TCP listener;
#   its URL is WAYMARK_TEST_POSTGRES (the tests make one database each in it);
# - chromedriver (Debian's chromium-driver) on loopback: WAYMARK_TEST_WEBDRIVER.
# Run by hand, `source .ci/services.sh` gives a shell the same two variables.

waymark_services_dir=$(mktemp -d /tmp/waymark-services.XXXXXX)
chmod 755 "$waymark_services_dir"
waymark_pg_bin=/usr/lib/postgresql/15/bin
waymark_pg_port=${WAYMARK_PG_PORT:-54329}
waymark_as_postgres() {
  if [[ $(id -u) == 0 ]]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}
if [[ $(id -u) == 0 ]]; then
  chown postgres: "$waymark_services_dir"
fi
waymark_as_postgres "$waymark_pg_bin/initdb" -D "$waymark_services_dir/pg" -U waymark \
  --auth=trust --no-sync >"$waymark_services_dir/initdb.log"
waymark_as_postgres "$waymark_pg_bin/pg_ctl" -D "$waymark_services_dir/pg" -w \
  -l "$waymark_services_dir/postgres.log" \
  -o "-c listen_addresses= -k $waymark_services_dir -p $waymark_pg_port -c max_connections=400 -c fsync=off" \
  start >/dev/null
export WAYMARK_TEST_POSTGRES="postgres://waymark@localhost/postgres?host=$waymark_services_dir&port=$waymark_pg_port"

# A port nothing listens on (another chromedriver on the machine must not stand in for
# this run's: it may go away mid-run).
waymark_free_port() {
  local port
  for port in $(seq "$1" $(($1 + 500))); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}
waymark_driver_port=${WAYMARK_DRIVER_PORT:-$(waymark_free_port 9515)}
if command -v chromedriver >/dev/null; then
  chromedriver --port="$waymark_driver_port" --allowed-ips=127.0.0.1 \
    >"$waymark_services_dir/chromedriver.log" 2>&1 &
  waymark_driver_pid=$!
  for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$waymark_driver_port/status" >/dev/null 2>&1 && break
    sleep 0.1
  done
  # Ours answers, or the run stops here with its log rather than in a test.
  if ! kill -0 "$waymark_driver_pid" 2>/dev/null ||
    ! curl -fsS "http://127.0.0.1:$waymark_driver_port/status" >/dev/null 2>&1; then
    echo "chromedriver did not start on port $waymark_driver_port:" >&2
    cat "$waymark_services_dir/chromedriver.log" >&2
    return 1 2>/dev/null || exit 1
  fi
  export WAYMARK_TEST_WEBDRIVER="http://127.0.0.1:$waymark_driver_port"
fi

waymark_services_stop() {
  [[ -n ${waymark_driver_pid:-} ]] && kill "$waymark_driver_pid" 2>/dev/null
  waymark_as_postgres "$waymark_pg_bin/pg_ctl" -D "$waymark_services_dir/pg" -m immediate stop \
    >/dev/null 2>&1 || true
  rm -rf "$waymark_services_dir"
}
trap waymark_services_stop EXIT
