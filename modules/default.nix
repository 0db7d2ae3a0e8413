# The NixOS modules of Waymark. They follow in later work, one file each in
# this directory, imported here; until then this module is empty, so a fleet
# can already import `waymark.nixosModules.default`.
{ ... }:
{
  imports = [ ];
}
