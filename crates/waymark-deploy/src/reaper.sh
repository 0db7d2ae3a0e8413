# The run's last word on its ssh connections, however the run ends (SIGKILL included):
# started with the deploy, it waits for its stdin to end, which happens when the
# deployer exits or lets it go (the kernel closes the pipe). Then it tells every master
# connection still listening in the control directory to end (each ends the sessions
# it carries) and removes the directory. Without it a killed deployer's masters would
# live out ControlPersist with their sockets.
#
#   reaper.sh CONTROL_DIR
#
# It is in a process group of its own and ignores the terminal's signals, so a Ctrl-C
# that stops the deployer does not stop it first.
trap '' HUP INT TERM
dir=$1
while IFS= read -r _; do :; done
for socket in "$dir"/*; do
  [ -S "$socket" ] || continue
  # The forwarded nix-daemon sockets end with their masters.
  case $socket in *.nd) continue ;; esac
  ssh -F /dev/null -o ControlPath="$socket" -O exit waymark-reaper >/dev/null 2>&1
done
rm -rf -- "$dir"
