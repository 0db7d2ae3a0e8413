# One health check (parameters: check, a shell command, or url; seconds): tried until
# it passes or its time is up, each try bounded by what is left; says why it failed
# (`why=`).
if [ -n "$url" ]; then
  if command -v curl >/dev/null; then set -- curl -fsS -o /dev/null --max-time 10 "$url"
  else set -- wget -q -O /dev/null -T 10 "$url"; fi
else
  set -- sh -c "$check"
fi
end=$(( $(date +%s) + seconds ))
while :; do
  left=$(( end - $(date +%s) )); [ "$left" -gt 0 ] || left=1
  out=$(timeout "$left" "$@" 2>&1); rc=$?; [ $rc = 0 ] && exit 0
  if [ "$(date +%s)" -ge "$end" ]; then
    case $rc in 124|143) echo "why=no answer within $seconds s"; exit 1 ;; esac
    last=$(printf '%s\n' "$out" | tail -n 1); echo "why=exit $rc${last:+: $last}"; exit 1
  fi
  sleep 1
done
