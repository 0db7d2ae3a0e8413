# The units that failed (`failed=`).
systemctl list-units --state=failed --no-legend --plain 2>/dev/null | awk '{print $1}' | relay failed
