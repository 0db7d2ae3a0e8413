# The harness declaration itself: one env from the packages and the Python
# environment, one entrypoint exporting exactly PATH and the declared
# variables, host packages only on request, and bad variables refused.
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
      (t.harnessHost "h")
      extra
    ];

  plain = host { };
  withPython = host {
    waymark.harness.python.enable = true;
    waymark.harness.python.packages = ps: [
      ps.pytest
      ps.requests
    ];
    waymark.harness.environment.GREETING = "it's \"quoted\" $HOME";
  };
  text = withPython.waymark.harness.entrypoint.text;

  # Whether the harness env is on the host's system packages (NixOS adds
  # packages of its own there, so the list is never compared whole).
  onHost = c: lib.elem "${c.waymark.harness.env}" (map toString c.environment.systemPackages);
in
t.all [
  (t.clean "a harness alone evaluates" plain)
  (t.eq "the env is built from the packages" 2 (builtins.length plain.waymark.harness.contents))
  (t.ok "the Python environment joins the env" (
    builtins.length withPython.waymark.harness.contents == 3
    && lib.all (c: lib.elem c withPython.waymark.harness.provides) [
      "python3"
      "pytest"
    ]
  ))
  (t.ok "Python changes the env's store path" (
    "${plain.waymark.harness.env}" != "${withPython.waymark.harness.env}"
  ))
  (t.eq "exports: PATH and the variables, nothing else" [
    "GREETING"
    "PATH"
  ] (lib.attrNames withPython.waymark.harness.exports))
  (t.ok "values are shell-quoted in the entrypoint" (
    lib.hasInfix "export GREETING=${lib.escapeShellArg "it's \"quoted\" $HOME"}" text
  ))
  (t.ok "the entrypoint execs its arguments and refuses none" (
    lib.hasInfix ''exec "$@"'' text && lib.hasInfix "exit 2" text
  ))
  (t.eq "the entrypoint is harness-run" "harness-run" withPython.waymark.harness.entrypoint.meta.mainProgram)
  (t.ok "the host gets nothing unless asked" (!(onHost plain)))
  (t.ok "the host gets the env and the entrypoint when asked" (
    let
      c = host { waymark.harness.installOnHost = true; };
      names = map toString c.environment.systemPackages;
    in
    lib.elem "${c.waymark.harness.env}" names && lib.elem "${c.waymark.harness.entrypoint}" names
  ))
  (t.failsWith "PATH is not a variable of the harness" [ "must not set PATH" ] (
    host { waymark.harness.environment.PATH = "/bin"; }
  ))
  (t.failsWith "HOME belongs to the unit" [ "must not set HOME" ] (host { waymark.harness.environment.HOME = "/tmp"; }))
  (t.failsWith "a variable needs a valid name" [ "not a variable name: 1BAD" ] (
    host { waymark.harness.environment."1BAD" = "x"; }
  ))
  (t.ok "an empty harness warns" (
    lib.any (lib.hasInfix "waymark.harness is enabled with no packages") (t.eval [
      {
        networking.hostName = "h";
        waymark.harness.enable = true;
      }
    ]).warnings
  ))
  (t.ok "a disabled harness asserts nothing and installs nothing" (
    let
      c = t.eval [ { waymark.harness.installOnHost = true; } ];
    in
    t.failedAssertions c == [ ] && !(onHost c)
  ))
]
