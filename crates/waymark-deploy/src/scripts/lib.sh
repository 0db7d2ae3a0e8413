# What every script sent to a host starts with (and the agent): the exit statuses the
# deployer reads, how a path is followed, how a command's output is relayed. Its
# parameters come before it, as shell variables quoted once by the deployer
# (`protocol::script`).

# Exit statuses the deployer reads (decide.rs has the same numbers; a test compares).
EXIT_CONFIRM_LATE=3
EXIT_BUSY=75
EXIT_AGENT_NOT_STARTED=76

# `real PATH`, in `$(...)`: where PATH leads, every link followed, as `readlink -e` says
# for a directory, but with a fork and no program to start (the `cd` stays in the
# substitution's subshell).
real() { cd -P -- "$1" 2>/dev/null && pwd -P; }

# `relay [-l] KEY`: each line of stdin as `KEY=LINE`, so no line of a command's output
# can be read as a marker (`@@...`) or as another key's line; a last line without its
# newline gets one (and an empty line follows, which readers skip). With -l each line
# goes as it comes (a read a byte at a time: for logs), else all at once through sed.
relay() {
  if [ "$1" = -l ]; then
    while IFS= read -r l || [ -n "$l" ]; do printf '%s=%s\n' "$2" "$l"; done
  else
    sed "s/^/$1=/"; echo
  fi
}

# `waymark_run ARGS...`: the waymark command of the hosts (`$waymark`, a command line run
# as it is: it may set variables first) with ARGS, each kept whole.
waymark_run() { eval "$waymark"' "$@"'; }
