#!/usr/bin/env bash
# Makes (once) the Debian root that the testbed's systemd hosts boot with
# `systemd-nspawn --boot` (src/systemd.rs): systemd as PID 1, dbus, an sshd, Debian's
# Nix 2.8 with a nix-daemon unit (as on NixOS), busybox. Each host boots it with a
# volatile overlay, so one root serves every host and is never written to.
#
#   systemd-root.sh [ROOT]     default: /var/cache/waymark-testbed/debian-bookworm-systemd-v$version
#
# Idempotent: a root whose stamp names this script's version is kept as it is. Each
# version has its own default path, so making one never removes a root that hosts of
# another checkout may be running from. Needs
# root, mmdebstrap and the Debian package registry (about 25 s and 300 MB).
set -euo pipefail

# Keep in step with ROOT_VERSION and DEFAULT_ROOT in src/systemd.rs (a unit test there
# checks): a change here makes the tests ask for a new root instead of booting an old one.
version=2
root=${1:-${WAYMARK_SYSTEMD_ROOT:-/var/cache/waymark-testbed/debian-bookworm-systemd-v$version}}
stamp="$root/.waymark-testbed-root"
mkdir -p "$(dirname "$root")"
# One maker at a time; the second finds the root made.
exec 9> "$root.lock"
flock 9

if [ "$(cat "$stamp" 2>/dev/null)" = "version=$version" ]; then
  echo "systemd root ready: $root" >&2
  exit 0
fi

# libpam-systemd: ssh logins are logind sessions (scopes), as on NixOS; libssl3: the
# waymark binary that hosts run for their known-good marks links it.
packages=systemd,systemd-sysv,dbus,libpam-systemd,openssh-server,nix-bin,busybox-static,procps,mawk,libssl3
tmp="$root.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$tmp"

# NixOS runs a nix-daemon; so does each host (its socket in the host's own /nix).
cat > "$tmp/etc/systemd/system/nix-daemon.service" <<'EOF'
[Unit]
Description=Nix daemon
RequiresMountsFor=/nix/store

[Service]
ExecStartPre=/bin/mkdir -p /nix/var/nix/daemon-socket
ExecStart=/usr/bin/nix-daemon
KillMode=process

[Install]
WantedBy=multi-user.target
EOF
ln -sf /etc/systemd/system/nix-daemon.service \
  "$tmp/etc/systemd/system/multi-user.target.wants/nix-daemon.service"
# Each host binds its own sshd settings (port, keys) here.
: > "$tmp/etc/ssh/sshd_config.d/waymark-testbed.conf"
mkdir -p "$tmp/nix" "$tmp/etc/waymark-testbed/ssh"
echo "version=$version" > "$tmp/.waymark-testbed-root"

rm -rf "$root"
mv "$tmp" "$root"
trap - EXIT
echo "systemd root made: $root" >&2
