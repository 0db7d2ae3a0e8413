# The build host's session, the same whatever is built (so it can start before the
# flake is evaluated): it answers which of the paths it is sent (one a line, up to an
# empty line) its store lacks (`missing=`), takes those as `nix-store --export` after a
# line `export` (or none after `none`), says `@@imported`, then runs what it is sent
# (`serve.sh`): the build, then the marks of what was built. `read` takes a byte at a
# time, so what follows the list is left for the import.
[ ! -S /nix/var/nix/daemon-socket/socket ] || echo "daemon=yes"
set --
while IFS= read -r p && [ -n "$p" ]; do set -- "$@" "$p"; done
[ $# = 0 ] || nix-store --check-validity --print-invalid "$@" | relay missing
echo "@@missing"
if IFS= read -r more && [ "$more" = export ]; then
  nix-store --import >/dev/null || { echo "@@import-refused"; exit 0; }
fi
echo "@@imported"
