# The closure of $path: `nix path-info --json --recursive`, its stdout alone.
nix --extra-experimental-features nix-command path-info --json --recursive "$path"
