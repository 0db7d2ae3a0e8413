# Adding one package to the shared declaration reaches the runner, every
# sweep and the host packages: the example CI host, and a host with a runner
# of every kind, evaluated before and after adding jq to
# `waymark.harness.packages`. Every consumer moves to the new env and none
# keeps the old one.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };

  addJq = { pkgs, ... }: { waymark.harness.packages = [ pkgs.jq ]; };

  # Every string through which a consumer reaches its commands.
  consumers =
    c:
    let
      units = lib.mapAttrsToList (_: r: r.unit) c.waymark.runners ++ lib.mapAttrsToList (_: s: s.unit) c.waymark.sweeps;
      unitRefs = lib.concatMap (
        u:
        let
          s = c.systemd.services.${u};
        in
        [
          {
            name = "${u} PATH";
            value = s.environment.PATH;
          }
        ]
        ++ lib.optional (s.serviceConfig ? ExecStart && lib.hasInfix "harness-run" (toString s.serviceConfig.ExecStart)) {
          name = "${u} ExecStart";
          value = toString s.serviceConfig.ExecStart;
        }
      ) units;
    in
    lib.listToAttrs unitRefs
    // lib.optionalAttrs c.waymark.harness.installOnHost {
      "environment.systemPackages" = toString c.environment.systemPackages;
    };

  # The env a consumer string names, directly or through the entrypoint.
  envOf =
    c: s:
    if lib.hasInfix "${c.waymark.harness.entrypoint}" s then
      lib.unique (t.envPathsIn s ++ [ "${c.waymark.harness.env}" ])
    else
      t.envPathsIn s;

  compare =
    label: modules:
    let
      before = t.eval modules;
      after = t.eval (modules ++ [ addJq ]);
      old = "${before.waymark.harness.env}";
      new = "${after.waymark.harness.env}";
      refs = consumers after;
      stale = lib.filterAttrs (_: s: lib.hasInfix old s || lib.hasInfix "${before.waymark.harness.entrypoint}" s) refs;
      missed = lib.filterAttrs (_: s: envOf after s != [ new ]) refs;
    in
    [
      (t.clean "${label}: evaluates with jq added" after)
      (t.ok "${label}: adding a package changes the env" (old != new))
      (t.ok "${label}: adding a package changes the entrypoint" (
        "${before.waymark.harness.entrypoint}" != "${after.waymark.harness.entrypoint}"
      ))
      (t.ok "${label}: there are consumers to check" (builtins.length (lib.attrNames refs) >= 3))
      (t.eq "${label}: no consumer keeps the old env" [ ] (lib.attrNames stale))
      (t.eq "${label}: every consumer has the new env" [ ] (lib.attrNames missed))
      (t.ok "${label}: jq is provided after, not before" (
        lib.elem "jq" after.waymark.harness.provides && !(lib.elem "jq" before.waymark.harness.provides)
      ))
    ];
in
t.all (
  compare "CI host" [ ../../hosts/ci/configuration.nix ]
  ++ compare "every runner kind" [
    ./all-runner-kinds.nix
    { waymark.harness.installOnHost = true; }
  ]
  ++ [
    (t.ok "the CI host's consumers include the runner, both sweeps and the host packages" (
      let
        names = lib.attrNames (consumers (t.eval [ ../../hosts/ci/configuration.nix ]));
      in
      lib.all (n: lib.elem n names) [
        "gitea-runner-forgejo PATH"
        "waymark-sweep-nightly ExecStart"
        "waymark-sweep-weekly ExecStart"
        "waymark-sweep-nightly PATH"
        "waymark-sweep-weekly PATH"
        "environment.systemPackages"
      ]
    ))
  ]
)
