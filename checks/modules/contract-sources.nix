# Where each option that ./contract.nix declares was taken from: the nixpkgs
# file and the revision read. `test-contract-sources` fails when the
# contract declares an option missing here; `sync-contract.sh <nixpkgs
# checkout>` re-reads each declaration from a checkout and reports how it
# differs from the contract's (type, default, sub-options), so the contract
# can be re-synced when flake.lock moves.
#
# `read`: whether the declaration was compared with that revision by hand
# when it was copied. Where it is false, the revision is the copy that was at
# hand, and only sync-contract.sh against a checkout will say whether the
# contract still matches.
let
  ci = "nixos/modules/services/continuous-integration";
  source = file: rev: read: { inherit file rev read; };

  assertions = source "nixos/modules/misc/assertions.nix" "c9634190fe4c832b63bb617a72fdd4461b3ca9da" true;
  nix = source "nixos/modules/config/nix.nix" "2d0f4a7ec19082248094eb04a35c93c94b1d35d5" true;
  users = source "nixos/modules/config/users-groups.nix" "b69a0b599fef1d6fd5aff59e1e07135fff17c359" true;
  tmpfiles = source "nixos/modules/system/boot/systemd/tmpfiles.nix" "9ab61b2537be813fd4e097ce04c8b098c5a4bcbf" true;
  systemd = source "nixos/modules/system/boot/systemd.nix" "c32bf83301bc4063df924ee442d8e35c1b96d912" false;
  gitea = source "${ci}/gitea-actions-runner.nix" "359f8630b84590040ab2916d2740af02a35aaaca" true;
  woodpecker = source "${ci}/woodpecker/agents.nix" "744611273ea2a63ce31e968e88ef2392f32054b5" true;
in
{
  options = {
    "assertions" = assertions;
    "warnings" = assertions;
    "networking.hostName" =
      source "nixos/modules/tasks/network-interfaces.nix" "577cb341b4463d094b5180bd5a39c49c0b49e5f6"
        false;
    "environment.systemPackages" =
      source "nixos/modules/config/system-path.nix" "6fc5ce2c4f765ce8edb4368557884ba1d7e2c53e"
        false;
    "environment.variables" =
      source "nixos/modules/config/shells-environment.nix" "0e333688cea468a28516bf6935648c03ed62a7bb"
        false;
    "users.users" = users;
    "users.groups" = users;
    "nix.settings" = nix;
    "systemd.enableStrictShellChecks" = systemd;
    "systemd.services" = systemd;
    "systemd.timers" = systemd;
    "systemd.tmpfiles.rules" = tmpfiles;
    "systemd.tmpfiles.settings" = tmpfiles;
    "virtualisation.docker.enable" =
      source "nixos/modules/virtualisation/docker.nix" "bdd8295ff4b838fbf2fbdaf17b83b41b1aed6265"
        false;
    "virtualisation.podman.enable" =
      source "nixos/modules/virtualisation/podman/default.nix" "2c20fe0d8987085ed8d13a8f11b17ab372240f69"
        false;
    "services.gitea-actions-runner.package" = gitea;
    "services.gitea-actions-runner.instances" = gitea;
    "services.woodpecker-agents.agents" = woodpecker;
  };

  # Differences the contract keeps on purpose, by the path sync-contract.sh
  # prints, with why. They are reported as ACCEPTED, not as DIFF.
  accepted = {
    "users.users.<name>.name" = "passwdEntry str upstream (and a default from the attribute name set in config); a plain str with that default here";
    "users.users.<name>.description" = "passwdEntry str upstream; a plain str here";
    "users.users.<name>.home" = "passwdEntry path upstream; a str here, so the tests need no path coercion";
    "users.groups.<name>.name" = "passwdEntry str upstream; a plain str here";
    "services.gitea-actions-runner.instances.<name>.settings" = "a YAML-format submodule upstream; attrsOf anything here (the tests write no settings)";
    "systemd.services" = "upstream's unit submodule has far more options; the contract declares the ones the modules write";
    "systemd.timers" = "upstream's unit submodule has far more options; the contract declares the ones the modules write";
  };
}
