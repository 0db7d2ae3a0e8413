# Known-good on hosts: the state and GC-roots directories `waymark known-good`
# uses by default (/var/lib/waymark, /nix/var/nix/gcroots/waymark), owned by
# the deploy user when there is one, with WAYMARK_STATE_DIR and
# WAYMARK_ROOTS_DIR pointing at them; a roots directory outside the store's
# gcroots is refused.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };

  host =
    extra:
    t.eval [
      {
        networking.hostName = "kg";
        waymark.knownGood.enable = true;
      }
      extra
    ];

  dirs = c: lib.mapAttrs (_: e: e.d) c.systemd.tmpfiles.settings."10-waymark-known-good";
  owners = c: lib.mapAttrs (_: d: "${d.user}:${d.group} ${d.mode}") (dirs c);

  asRoot = host { };
  builder = t.eval [ ../../hosts/builder/configuration.nix ];
  ci = t.eval [ ../../hosts/ci/configuration.nix ];
in
t.all [
  (t.clean "defaults evaluate" asRoot)
  (t.eq "the default directories, owned by root" {
    "/var/lib/waymark" = "root:root 0755";
    "/var/lib/waymark/known-good" = "root:root 0755";
    "/nix/var/nix/gcroots/waymark" = "root:root 0755";
  } (owners asRoot))
  (t.eq "the variables name them" {
    WAYMARK_STATE_DIR = "/var/lib/waymark";
    WAYMARK_ROOTS_DIR = "/nix/var/nix/gcroots/waymark";
  } { inherit (asRoot.environment.variables) WAYMARK_STATE_DIR WAYMARK_ROOTS_DIR; })
  (t.clean "the build host evaluates" builder)
  (t.eq "a deploy user owns them and gets its per-user gcroots" {
    "/var/lib/waymark" = "deploy:users 0755";
    "/var/lib/waymark/known-good" = "deploy:users 0755";
    "/nix/var/nix/gcroots/waymark" = "deploy:users 0755";
    "/nix/var/nix/gcroots/per-user/deploy" = "deploy:root 0755";
  } (owners builder))
  (t.eq "the CI host deploys as root" "root" ci.waymark.knownGood.user)
  (t.failsWith "roots outside the store's gcroots are refused" [ "must be inside /nix/var/nix/gcroots" ] (
    host { waymark.knownGood.rootsDir = "/var/lib/waymark/roots"; }
  ))
  (t.failsWith "an undeclared user is refused" [ "waymark.knownGood.user: \"ghost\" is not declared" ] (
    host { waymark.knownGood.user = "ghost"; }
  ))
  (t.ok "no CLI unless a package is given" (
    !(lib.any (p: lib.getName p == "waymark-cli") asRoot.environment.systemPackages)
  ))
  (t.ok "the CLI when given" (
    lib.any (p: lib.getName p == "waymark-cli") (host (
      { pkgs, ... }:
      {
        waymark.knownGood.package = pkgs.runCommand "waymark-cli" { } "mkdir -p $out/bin";
      }
    )).environment.systemPackages
  ))
]
