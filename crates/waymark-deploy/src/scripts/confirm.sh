# Gate 5's confirmation, over a new connection, for the agent in $dir (parameters:
# mark, expect, closure, target, rev, waymark, pause; then `wait.sh` and
# `confirm_mark.sh`). With mark, the evidence (one line of JSON, stdin) is left there
# first, for a later deploy to finish this one if it is stopped after the commit.
echo $$ > "$dir/confirmer"
evidence=
if [ -n "$mark" ]; then
  IFS= read -r evidence || :
  printf '%s\n' "$evidence" > "$dir/evidence.json"
fi
mv "$dir/window" "$dir/confirmed" 2>/dev/null || { echo late=yes; exit "$EXIT_CONFIRM_LATE"; }
read -r w < "$dir/waiter" && kill "$w" 2>/dev/null
[ "$pause" = 0 ] || sleep "$pause"
