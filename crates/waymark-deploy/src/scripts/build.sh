# The build on a build host (parameters: drvs and outs, one path a line; key): Nix's
# structured log relayed as it comes (`log=`), the build's status kept aside through
# fd 3; then what was built (`built=`), signed with key, and its closures' path-info.
set -f
nl='
'
IFS=$nl
exec 4>&1
rc=$( { { nix-store --realise --keep-going --log-format internal-json $drvs 2>&1 >/dev/null 3>&- 4>&-
  echo $? >&3; } | relay -l log >&4; } 3>&1 )
exec 4>&-
invalid=$(nix-store --check-validity --print-invalid $outs 2>/dev/null)
valid=""
for o in $outs; do
  case "$nl$invalid$nl" in *"$nl$o$nl"*) ;; *) valid="$valid$o$nl"; echo "built=$o" ;; esac
done
if [ -n "$valid" ]; then
  signing=$(nix --extra-experimental-features nix-command store sign --key-file "$key" --recursive $valid 2>&1) ||
    printf '%s\n' "$signing" | grep . | tail -n 1 | relay unsigned
fi
[ "$rc" = 0 ] || echo "rc=$rc"
[ -z "$valid" ] ||
  nix --extra-experimental-features nix-command path-info --json --recursive $valid 2>/dev/null | relay closures
