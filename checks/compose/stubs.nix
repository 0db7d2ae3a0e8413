# The options a composed host's modules touch here, for `lib.evalModules`
# without nixpkgs: Waymark's real `waymark.deploy` (modules/deploy.nix, what
# lib.fleet reads), the NixOS options it and lib.compose's host module set
# (accepted, not checked), and `fleetTest.*` options for the aspects' parts.
{ lib, ... }:
let
  anything = lib.mkOption {
    type = lib.types.anything;
    default = { };
    description = "Accepted, not checked (checks/compose/stubs.nix).";
  };
in
{
  imports = [ ../../modules/deploy.nix ];

  options = {
    networking.hostName = lib.mkOption {
      type = lib.types.str;
      default = "nixos";
      description = "The host's name (NixOS's option, as far as the deploy module reads it).";
    };
    assertions = lib.mkOption {
      type = lib.types.listOf lib.types.unspecified;
      default = [ ];
      description = "Assertions (NixOS's option).";
    };
    nixpkgs = anything;
    nix = anything;
    home-manager = anything;

    fleetTest = {
      marks = lib.mkOption {
        type = lib.types.listOf lib.types.str;
        default = [ ];
        description = "What each aspect adds; the order shows the modules' order.";
      };
      port = lib.mkOption {
        type = lib.types.nullOr lib.types.port;
        default = null;
        description = "A setting two aspects can disagree on.";
      };
    };
  };
}
