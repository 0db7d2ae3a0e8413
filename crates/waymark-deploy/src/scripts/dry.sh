# Gate 3 (parameters: closure, activation): dry-activate, its output relayed (`dry=`),
# its status and time; what follows (the agent's start) only runs when it passed.
read -r u0 _ < /proc/uptime || u0=0.00
dry=$(timeout "$activation" "$closure/bin/switch-to-configuration" dry-activate 2>&1); rc=$?
read -r u1 _ < /proc/uptime || u1=$u0
printf '%s\n' "$dry" | relay dry
# Hundredths of seconds since boot ("1${..}": no leading zero, no octal).
echo "dry-rc=$rc"; echo "dry-ms=$(( (${u1%.*} - ${u0%.*}) * 1000 + (1${u1#*.} - 1${u0#*.}) * 10 ))"
[ $rc = 0 ] || exit 0
