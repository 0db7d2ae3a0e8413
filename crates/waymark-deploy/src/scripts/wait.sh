# Waits until the agent in $dir reaches a final state (or, with until=activation, also
# awaits the confirmation) or $seconds pass, then prints `state=`, `running=`,
# `profile=` (also left in $s, $running and $profile) and the tail of the activation
# log (`log=`).
i=0; s=
rounds=$(( 30 + seconds * 20 )) # 30 rounds of 10 ms (most waits end there), then 20 a second.
# The state is the file's last whole line.
last_state() { { while IFS= read -r l; do s=$l; done < "$dir/state"; } 2>/dev/null; }
reached() {
  case "$s" in
  committed | kept | restored:* | restore-failed:* | refused:*) return 0 ;;
  awaiting-confirmation) [ "$until" = activation ] ;;
  *) return 1 ;;
  esac
}
if [ -p "$dir/events" ]; then
  # The agent writes each new state to the FIFO: wake on it, no polling. It is open
  # before the state is read, so no change is missed; a watchdog writes the timeout.
  exec 3<>"$dir/events"
  # The watchdog sleeps a second at a time while the flag file is there: whenever the
  # wait ends, it is gone within a second, with no kill to race its start.
  f="$dir/waiting.$$"; : > "$f"
  (n=0; while [ "$n" -lt "$seconds" ] && [ -e "$f" ]; do sleep 1; n=$(( n + 1 )); done
    [ ! -e "$f" ] || echo timeout >&3) </dev/null >/dev/null 2>&1 &
  while :; do last_state; ! reached || break
    read -r e <&3; [ "$e" != timeout ] || { last_state; break; }; done
  rm -f "$f"; exec 3<&-
else
  while :; do last_state; ! reached || break
    [ "$i" -lt "$rounds" ] || break; i=$(( i + 1 ))
    if [ "$i" -le 30 ]; then sleep 0.01; else sleep 0.05; fi; done
fi
running=$(real /run/current-system); profile=$(real /nix/var/nix/profiles/system)
echo "state=$s"; echo "running=$running"; echo "profile=$profile"
case "$s" in awaiting-confirmation|committed|kept) ;; *)
  tail -n 3 "$dir/activate.log" "$dir/commit.log" "$dir/restore.log" 2>/dev/null | grep -v '^==>' | grep . | relay log ;;
esac
