# The "no second dependency list" rule, as a pure function over files.
#
# Drift starts when something other than `waymark.harness` says what a test
# can run: a runner's PATH, a timer's own list, a package added to the host
# by hand. So in every .nix file under the scanned directories, except the
# harness module itself, a line is a finding when its code (the text before
# a `#` that starts the line or follows whitespace) has one of:
#
#   package-list-option  an option typed as a list of packages:
#                        `listOf package`, `listOf types.package`, ...
#   dependency-list      an assignment to an attribute that carries commands:
#                        packages, systemPackages, hostPackages,
#                        extraPackages, runtimeInputs, path, paths, PATH
#   env-builder          something that builds a command environment:
#                        buildEnv, withPackages, symlinkJoin, makeBinPath,
#                        makeSearchPath, `with pkgs`
#
# A finding is excused when
#
# - its statement (the line up to the first line with a `;`) uses a harness
#   output (`harness.env`, `harness.entrypoint`, `harness.exports`,
#   `harness.contents`) and names no `pkgs.` package: plugging the one env
#   into an upstream option is the point, adding packages next to it is not;
# - the statement is the declaration itself: it assigns
#   `waymark.harness.packages` or `waymark.harness.python.packages`, written
#   with that option path (a host's configuration does so);
# - the line, or the line before it, carries the marker
#   `waymark-lint: not a harness dependency list (<reason>)` with a reason,
#   for lists that are not about tests (the waymark CLI on a host).
#
# What it cannot see: lists built elsewhere and passed in by name, and files
# outside the scanned directories. It errs towards findings: a `path =` that
# is not about commands needs the marker.
{ lib }:
let
  names = [
    "packages"
    "systemPackages"
    "hostPackages"
    "extraPackages"
    "runtimeInputs"
    "path"
    "paths"
    "PATH"
  ];

  rules = [
    {
      rule = "package-list-option";
      regex = ".*listOf[[:space:]]*[(]?[[:space:]]*((lib[.])?types[.])?package([^A-Za-z0-9_'-].*|$)";
    }
    {
      rule = "dependency-list";
      regex = "(|.*[^A-Za-z0-9_'-])(${lib.concatStringsSep "|" names})[[:space:]]*=([^=>].*|$)";
    }
    {
      rule = "env-builder";
      regex = ".*(buildEnv|withPackages|symlinkJoin|makeBinPath|makeSearchPath|with[[:space:]]+pkgs[[:space:]]*;).*";
    }
  ];

  harnessOutput = ".*harness[.](env|entrypoint|exports|contents)([^A-Za-z0-9_'-].*|$)";
  declaration = "[[:space:]]*waymark[.]harness[.](python[.])?packages[[:space:]]*=.*";
  marker = ".*waymark-lint: not a harness dependency list [(][^)]+[)].*";

  codeOf = line: lib.head (builtins.split "(^|[[:space:]])#" line);

  matches = regex: s: builtins.match regex s != null;

  # Every .nix file under `dir`, recursively.
  nixFiles =
    dir:
    lib.concatLists (
      lib.mapAttrsToList (
        name: type:
        let
          path = dir + "/${name}";
        in
        if type == "directory" then
          nixFiles path
        else if type == "regular" && lib.hasSuffix ".nix" name then
          [ path ]
        else
          [ ]
      ) (builtins.readDir dir)
    );

  scanFile =
    root: file:
    let
      lines = lib.filter builtins.isString (builtins.split "\n" (builtins.readFile file));
      count = builtins.length lines;
      line = i: builtins.elemAt lines i;
      code = i: codeOf (line i);

      # Lines i.. up to the first one whose code has a `;`, as code.
      statement =
        i:
        let
          go = j: if j >= count then "" else code j + "\n" + (if lib.hasInfix ";" (code j) then "" else go (j + 1));
        in
        go i;

      excused =
        i:
        let
          s = statement i;
        in
        matches marker (line i)
        || (i > 0 && matches marker (line (i - 1)))
        || matches declaration (builtins.replaceStrings [ "\n" ] [ " " ] s)
        || (
          matches harnessOutput (builtins.replaceStrings [ "\n" ] [ " " ] s) && !(lib.hasInfix "pkgs." s)
        );

      findingsAt =
        i:
        map (r: {
          file = lib.removePrefix "${toString root}/" (toString file);
          line = i + 1;
          inherit (r) rule;
          text = lib.trim (line i);
        }) (lib.filter (r: matches r.regex (code i)) rules);
    in
    lib.concatMap (i: if excused i then [ ] else findingsAt i) (lib.range 0 (count - 1));
in
{
  inherit rules;

  # Findings in the .nix files under `dirs` (paths below `root`), except the
  # files in `exclude`: a list of { file; line; rule; text; }.
  scan =
    {
      root,
      dirs,
      exclude ? [ ],
    }:
    let
      excluded = map toString exclude;
      files = lib.filter (f: !(lib.elem (toString f) excluded)) (lib.concatMap nixFiles dirs);
    in
    lib.concatMap (scanFile root) files;

  format =
    findings:
    lib.concatMapStringsSep "\n" (f: "  ${f.file}:${toString f.line}: ${f.rule}: ${f.text}") findings;
}
