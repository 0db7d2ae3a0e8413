# The switch is inhibited: $closure becomes the boot default (profile and boot entry),
# the running system stays; put back as it was if that fails.
p=/nix/var/nix/profiles/system; before=$(real $p)
if nix-env -p $p --set "$closure" && timeout "$activation" "$closure/bin/switch-to-configuration" boot; then echo boot=yes
else [ -z "$before" ] || { nix-env -p $p --set "$before"; "$before/bin/switch-to-configuration" boot; }; fi
echo "running=$(real /run/current-system)"; echo "profile=$(real $p)"
