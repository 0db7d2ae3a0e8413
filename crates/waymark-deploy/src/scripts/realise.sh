# Builds $drv in the host's own store (allowBuildOnTarget).
nix-store --realise "$drv" --quiet
