# A target's probe (parameters: waymark, kept_root): what it runs, its boot default,
# failed units, the agents of earlier deploys, its known-good marks and (unless it runs
# kept_root, whose closure the deployer kept) the closure it runs. Then `run_next.sh`.
running=$(real /run/current-system)
echo "running=$running"
echo "profile=$(real /nix/var/nix/profiles/system)"
[ ! -S /nix/var/nix/daemon-socket/socket ] || echo "daemon=yes"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  echo "units=yes"
  systemctl list-units --state=failed --no-legend --plain 2>/dev/null | awk '{print $1}' | relay failed
fi
# Agents whose deploy left its evidence and did not say it marked (see unfinished.rs).
for d in /run/waymark/deploy/*; do
  [ -f "$d/evidence.json" ] && [ ! -e "$d/marked" ] || continue
  s=; { while IFS= read -r l; do s=$l; done < "$d/state"; } 2>/dev/null
  e=; { IFS= read -r e < "$d/evidence.json"; } 2>/dev/null
  printf 'agent=%s\nagent-state=%s\nagent-evidence=%s\n' "$d" "$s" "$e"
done
# Another deploy's agent at work: the lock's holder runs (as the launch takes it).
a=; { read -r a < /run/waymark/active/pid; } 2>/dev/null
if [ -n "$a" ] && kill -0 "$a" 2>/dev/null &&
  ! grep -q '^State:[[:space:]]*Z' "/proc/$a/status" 2>/dev/null; then
  i=; { read -r i < /run/waymark/active/id; } 2>/dev/null; printf 'active=%s\n' "${i:-?}"
fi
echo "@@marks"
waymark_run known-good list --json | relay marks
[ -n "$running" ] && [ "$running" != "$kept_root" ] &&
  nix --extra-experimental-features nix-command path-info --json --recursive "$running" | relay old
echo "@@probed"
