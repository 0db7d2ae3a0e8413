# The watcher where `waymark host-watch` cannot run: polls the system links every
# $1 seconds and prints a `facts` line when one changed (the protocol of
# waymark_converge::protocol). $2 is the command printing the host's latest known-good
# closure, run only when a link changed or every 20 polls: marks change with deploys.
# Every 20 polls an empty line (nothing new) tells whether the controller is still
# there: once its connection is gone the write fails and the script ends.
interval=$1
known_good_cmd=$2
printf 'hello\t1\tpoll\n'
last=
n=0
kg=
while :; do
  c=$(readlink -f /run/current-system 2>/dev/null)
  p=$(readlink -f /nix/var/nix/profiles/system 2>/dev/null)
  b=$(readlink -f /run/booted-system 2>/dev/null)
  links="$c $p $b"
  if [ "$links" != "$last" ] || [ $((n % 20)) -eq 0 ]; then
    kg=$(sh -c "$known_good_cmd" 2>/dev/null)
  fi
  now="$links $kg"
  if [ "$now" != "$last_all" ]; then
    printf 'facts\tcurrent=%s\tprofile=%s\tbooted=%s\tknown-good=%s\n' "$c" "$p" "$b" "$kg" || exit 0
    last_all=$now
  fi
  if [ $((n % 20)) -eq 19 ]; then
    printf '\n' || exit 0
  fi
  last=$links
  n=$((n + 1))
  sleep "$interval"
done
