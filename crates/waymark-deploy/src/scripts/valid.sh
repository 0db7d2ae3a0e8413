# Whether $closure is in the store, whole.
nix-store --check-validity "$closure" 2>/dev/null
