# The GC-roots directories of the units Waymark writes (runners, sweeps), as
# `systemd.tmpfiles.settings` entries: the base directory owned by root, and
# one directory per unit owned by the user that creates roots in it. A plain
# function, imported by ./runners.nix and ./sweeps.nix; not a module.
#
#   gcRootsDirs "/nix/var/nix/gcroots/waymark-runners" [ { dir = "..."; user = "..."; group = "..."; } ]
{ lib }:
base: owners:
{
  ${base}.d = {
    mode = "0755";
    user = "root";
    group = "root";
  };
}
// lib.listToAttrs (
  map (o: lib.nameValuePair o.dir { d = { mode = "0755"; inherit (o) user group; }; }) owners
)
