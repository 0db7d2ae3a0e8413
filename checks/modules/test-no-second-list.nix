# Single source, kept: no file in modules/, hosts/ or templates/ except the
# harness module declares a dependency list of its own (the rule is in
# ./lint.nix). The rule is shown to work on planted offenders: each line of
# the fixtures marked `# FINDING <rules>` must be reported with those rules,
# and nothing else.
{ lib, ... }:
let
  t = import ./lib.nix { inherit lib; };
  lint = import ./lint.nix { inherit lib; };

  repo = lint.scan {
    inherit (t) root;
    dirs = [
      ../../modules
      ../../hosts
      ../../templates
    ];
    exclude = [ ../../modules/harness.nix ];
  };

  fixtureRoot = ./fixtures/second-list;
  fixtures = lint.scan {
    root = fixtureRoot;
    dirs = [ fixtureRoot ];
  };

  # The findings a fixture file announces with `# FINDING <rule> <rule>...`.
  announced =
    file:
    let
      lines = lib.filter builtins.isString (builtins.split "\n" (builtins.readFile (fixtureRoot + "/${file}")));
      rulesOf =
        l:
        let
          m = builtins.match ".*# FINDING ([a-z -]+).*" l;
        in
        if m == null then [ ] else lib.filter (w: w != "") (lib.splitString " " (lib.head m));
    in
    lib.concatLists (
      lib.imap1 (
        n: l:
        map (rule: {
          inherit file rule;
          line = n;
        }) (rulesOf l)
      ) lines
    );

  key = f: "${f.file}:${toString f.line}:${f.rule}";
  sorted = fs: lib.sort lib.lessThan (map key fs);

  expected =
    announced "modules/nightly-tests.nix"
    ++ announced "hosts/drifted/configuration.nix"
    ++ announced "modules/excused.nix";
in
t.all [
  (
    if repo == [ ] then
      true
    else
      t.fail "no second dependency list in the repository" "a file declares its own dependency list; add the packages to waymark.harness.packages instead:\n${lint.format repo}"
  )
  (t.ok "the rule sees the one real declaration (harness.nix, excluded above)" (
    lib.any (f: f.rule == "package-list-option") (lint.scan {
      inherit (t) root;
      dirs = [ ../../modules ];
    })
  ))
  (t.ok "the fixtures announce findings" (builtins.length expected >= 8))
  (t.eq "the planted offenders are found, line by line, and nothing else" (sorted expected) (sorted fixtures))
  (t.ok "the excused fixture has no finding" (
    lib.all (f: f.file != "modules/excused.nix") fixtures
  ))
]
