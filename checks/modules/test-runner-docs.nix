# docs/modules.md says, per runner kind, what its jobs can see: a section for
# every kind, naming each command the kind requires of the env and each way
# its jobs can reach a command outside the env (modules/runner-kinds.nix), so
# the page cannot fall behind the modules.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };
  kinds = import ../../modules/runner-kinds.nix { inherit lib; };
  doc = builtins.readFile (t.root + "/docs/modules.md");

  kindNames = lib.attrNames (removeAttrs kinds.outside [ "every" ]);

  # The text under a heading, up to the next second-level heading; null when
  # the heading is absent.
  section =
    heading:
    let
      parts = lib.splitString "\n${heading}\n" doc;
    in
    if lib.length parts < 2 then null else lib.head (lib.splitString "\n## " (lib.elemAt parts 1));

  # With forgejo-runner 12, so the conditional git requirement is included.
  requiredOf =
    kind:
    lib.unique (
      lib.concatLists (
        lib.attrValues (
          kinds.requires {
            inherit kind;
            giteaPackage = {
              pname = "forgejo-runner";
              version = "12.0.0";
            };
          }
        )
      )
    );

  problemsIn =
    heading: commands: routes:
    let
      s = section heading;
    in
    if s == null then
      [ "no section ${heading}" ]
    else
      map (c: "${heading} does not name the required command `${c}`") (
        lib.filter (c: !(lib.hasInfix "`${c}`" s)) commands
      )
      ++ map (o: "${heading} does not explain **${o}**") (lib.filter (o: !(lib.hasInfix "- **${o}**" s)) routes);

  problems =
    problemsIn "### Outside the env, whatever the kind" [ ] kinds.outside.every
    ++ lib.concatMap (k: problemsIn "## `${k}`" (requiredOf k) kinds.outside.${k}) kindNames;

  # Each documented kind is one the runners accept.
  accepted =
    kind:
    (t.eval [
      (t.harnessHost "docs")
      { waymark.runners.r.kind = kind; }
    ]).waymark.runners.r.kind == kind;
in
t.all [
  (t.eq "the documented kinds" [ "command" "drone-exec" "gitea-actions" "woodpecker" ] kindNames)
  (t.ok "every documented kind is accepted by waymark.runners.<name>.kind" (lib.all accepted kindNames))
  (t.eq "docs/modules.md names each kind's required commands and explains each way out of the env" [ ] problems)
]
