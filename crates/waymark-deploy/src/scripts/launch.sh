# Starts the agent (its script on stdin) in $dir, with the parameters closure,
# rollback_to, commit, window, activation and unit; then `wait.sh` follows.
mkdir -p "$dir" || { echo "start-failed=yes"; exit "$EXIT_AGENT_NOT_STARTED"; }
# The lock names who holds it; one whose holder is gone (a reboot clears /run anyway)
# is taken over.
if ! mkdir /run/waymark/active 2>/dev/null; then
  holder=$(cat /run/waymark/active/pid 2>/dev/null)
  if [ -n "$holder" ] && kill -0 "$holder" 2>/dev/null &&
    ! grep -q '^State:[[:space:]]*Z' "/proc/$holder/status" 2>/dev/null; then
    { cat /run/waymark/active/id 2>/dev/null || echo; } | relay busy
    rmdir "$dir"; exit "$EXIT_BUSY"
  fi
  rm -rf /run/waymark/active; mkdir /run/waymark/active || { echo busy=unknown; exit "$EXIT_BUSY"; }
fi
echo $$ > /run/waymark/active/pid; echo "$dir" > /run/waymark/active/id
set -- "$dir" "$closure" "$rollback_to" "$commit" "$window" "$activation"
started=
if { mkfifo "$dir/events" 2>/dev/null || true; } && cat > "$dir/agent.sh"; then
  if [ -d /run/systemd/system ] && command -v systemd-run >/dev/null; then
    # The unit gets this PATH: a transient unit's own has only systemd in it.
    systemd-run --quiet --collect --unit="$unit" --service-type=exec --setenv=PATH="$PATH" \
      "$(command -v sh)" "$dir/agent.sh" "$@" && started=yes
  elif command -v setsid >/dev/null; then
    # -f: a session of its own, and ssh does not wait for it.
    (cd / && setsid -f sh "$dir/agent.sh" "$@" </dev/null >"$dir/agent.log" 2>&1) && started=yes
  else
    (cd / && nohup sh "$dir/agent.sh" "$@" </dev/null >"$dir/agent.log" 2>&1 &) && started=yes
  fi
fi
if [ -z "$started" ]; then rm -rf /run/waymark/active; echo "start-failed=yes"; exit "$EXIT_AGENT_NOT_STARTED"; fi
