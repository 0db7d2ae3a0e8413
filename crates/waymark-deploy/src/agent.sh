# The activation agent: runs on the target, detached from the SSH session that
# started it (it survives the connection dropping and the deployer dying), and
# owns the decision between committing and restoring.
#
#   agent.sh DIR NEW PREV COMMIT CONFIRM_SECONDS ACTIVATION_SECONDS
#
# 1. `NEW/bin/switch-to-configuration test` (runtime only: no profile, no boot entry).
# 2. Opens a confirmation window (the file DIR/window) for CONFIRM_SECONDS.
#    The deployer confirms by renaming window to confirmed, over a new SSH
#    connection, or aborts by renaming it to aborted. At the deadline the agent
#    renames it to expired. A rename succeeds once, so exactly one of the three
#    happens: a late confirmation fails, visibly, instead of racing a rollback.
#    Renaming it, they also end the waiter (DIR/waiter), so the agent goes on at once.
# 3. confirmed: COMMIT is `switch` (set the system profile to NEW, then
#    `switch-to-configuration boot`), `boot` (the same, then re-activate PREV:
#    NEW runs from the next boot) or `none` (keep NEW running, as `test` does).
#    Otherwise, or when anything fails: `PREV/bin/switch-to-configuration test`,
#    an explicit store path, never "the previous generation"; the profile is put
#    back if it was moved.
#
# Progress goes to DIR/state (a line appended per state; the last one is the state),
# and each new state also to the FIFO DIR/events when there is one (waiters
# wake on it instead of polling); logs to DIR/*.log. Terminal states: committed, kept, restored:<why>,
# restore-failed:<why>, and refused:running-changed (nothing activated: the running
# system changed since the deployer read it). The lock /run/waymark/active is held until
# then (its pid file says by whom).
set -u
dir=$1 new=$2 prev=$3 commit=$4 confirm=$5 activation=$6
profile=/nix/var/nix/profiles/system
# (`real` and the exit statuses come from lib.sh, sent before this file.)

state() {
  # One short line appended in one write: a reader, taking the last whole line, never
  # sees half of one.
  printf '%s\n' "$1" >> "$dir/state"
  # Wakes whoever waits (opened read-write, a FIFO never blocks; unread, it is dropped).
  if [ -p "$dir/events" ]; then printf '%s\n' "$1" 1<>"$dir/events"; fi 2>/dev/null
}
# The EXIT trap frees the lock.
finish() {
  state "$1"
  exit 0
}
# Whatever ends this shell before finish (a signal, an error) still frees the lock.
trap 'rm -rf /run/waymark/active' EXIT
trap 'exit 1' HUP INT TERM
echo $$ > /run/waymark/active/pid

restore() {
  why=$1
  state "restoring:$why"
  failed=
  if [ -n "${profile_before:-}" ]; then
    { nix-env -p "$profile" --set "$profile_before" &&
      timeout "$activation" "$profile_before/bin/switch-to-configuration" boot; } >> "$dir/restore.log" 2>&1 ||
      failed=profile
  fi
  if [ -z "$prev" ]; then
    finish "restore-failed:$why"
  fi
  if timeout "$activation" "$prev/bin/switch-to-configuration" test >> "$dir/restore.log" 2>&1 &&
    [ "$(real /run/current-system)" = "$prev" ] && [ -z "$failed" ]; then
    finish "restored:$why"
  fi
  finish "restore-failed:$why"
}

# The system the deployer read is the one to come back to; if something else switched
# it since, activate nothing.
if [ "$(real /run/current-system)" != "$prev" ]; then
  finish "refused:running-changed"
fi

state activating
if ! timeout "$activation" "$new/bin/switch-to-configuration" test > "$dir/activate.log" 2>&1; then
  # Switch inhibitors refuse before activating anything: what runs is unchanged.
  if grep -qiE 'switch.?inhibitor|nixos-rebuild boot' "$dir/activate.log" &&
    [ "$(real /run/current-system)" = "$prev" ]; then
    restore inhibited
  fi
  restore activation-failed
fi

# The window lasts as long as one sleep, which whoever renames the window (confirmation
# or abort) ends at once: its pid is in DIR/waiter before the window exists.
sleep "$confirm" &
echo $! > "$dir/waiter"
: > "$dir/window"
state awaiting-confirmation
wait $! 2> /dev/null
# The rename decides; the test only spares starting `mv` once the window is gone.
if [ -e "$dir/window" ] && mv "$dir/window" "$dir/expired" 2> /dev/null; then
  restore confirm-timeout
fi
[ -e "$dir/confirmed" ] || restore aborted

case "$commit" in
  none) finish kept ;;
  switch | boot)
    state committing
    before=$(real "$profile" || true)
    nix-env -p "$profile" --set "$new" > "$dir/commit.log" 2>&1 || restore commit-failed
    # From here a failure puts the profile (and its boot entry) back first.
    profile_before=$before
    timeout "$activation" "$new/bin/switch-to-configuration" boot >> "$dir/commit.log" 2>&1 ||
      restore commit-failed
    profile_before=
    if [ "$commit" = boot ]; then
      timeout "$activation" "$prev/bin/switch-to-configuration" test >> "$dir/commit.log" 2>&1 ||
        finish "restore-failed:boot-only"
    fi
    finish committed
    ;;
esac
restore "unknown-commit-$commit"
