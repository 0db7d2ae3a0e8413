# Options the example hosts and the template set that no Waymark module reads
# (boot loader, file systems, state version, ...). Not part of the contract:
# they accept anything and check nothing, so the hosts can be evaluated with
# the contract here. The real `nixosSystem` in `nix flake check` checks them.
{ lib, ... }:
let
  stub = lib.mkOption {
    type = lib.types.anything;
    default = { };
    description = "Accepted, not checked (see checks/modules/host-stubs.nix).";
  };
in
{
  options = {
    boot = stub;
    fileSystems = stub;
    nixpkgs = stub;
    system = stub;
    time = stub;
    services.openssh = stub;
  };
}
