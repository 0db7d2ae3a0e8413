# What Waymark requires of the harness env for upstream's runner units
# (modules/runner-kinds.nix) was read from nixpkgs at a revision; a nixpkgs
# bump that changes those units must fail here, not on a runner at run time.
#
# - flake.lock's nixpkgs is the revision the lists were last checked for.
# - The registration script of the gitea-actions unit, read from the
#   evaluated unit (the contract's model here, the real upstream module in
#   `nix flake check`'s modules-nixos), runs only commands the kind requires.
# - So does the later upstream version of that script (grep, sed, tail,
#   sha256sum, cut), reduced below to the commands it runs.
{
  lib,
  evalSystem ? null,
  forceConfig ? null,
}:
let
  t = import ./lib.nix { inherit lib evalSystem forceConfig; };
  kinds = import ../../modules/runner-kinds.nix { inherit lib; };

  lockedNixpkgs = (builtins.fromJSON (builtins.readFile (t.root + "/flake.lock"))).nodes.nixpkgs.locked.rev;

  # External commands a registration script could run by name. Bash builtins
  # (echo, printf, cd, export, test, [, true, false) need no PATH.
  vocabulary = [
    "awk"
    "base64"
    "basename"
    "cat"
    "chmod"
    "chown"
    "cp"
    "curl"
    "cut"
    "date"
    "dirname"
    "env"
    "find"
    "gawk"
    "git"
    "grep"
    "head"
    "id"
    "install"
    "jq"
    "ln"
    "ls"
    "mkdir"
    "mktemp"
    "mv"
    "readlink"
    "realpath"
    "rm"
    "sed"
    "sha1sum"
    "sha256sum"
    "sleep"
    "sort"
    "stat"
    "tail"
    "tee"
    "touch"
    "tr"
    "uniq"
    "wc"
    "wget"
    "xargs"
  ];

  # The vocabulary's commands a shell script's text names outside comments.
  commandsIn =
    text:
    let
      code = lib.filter (l: !(lib.hasPrefix "#" (lib.trim l))) (lib.splitString "\n" text);
      words = lib.filter lib.isString (builtins.split "[][[:space:]|;&()$\"'<>=`{}]+" (lib.concatLines code));
    in
    lib.sort lib.lessThan (lib.unique (lib.filter (w: lib.elem w vocabulary) words));

  notRequired = cmds: lib.filter (c: !(lib.elem c kinds.giteaRegistration)) cmds;

  config = t.eval [ ./all-runner-kinds.nix ];
  unit = config.systemd.services.${config.waymark.runners.forgejo.unit};
  # Each ExecStartPre entry whose script text evaluation can read (a
  # writeShellScript derivation keeps `text`).
  scripts = lib.filter (e: builtins.isAttrs e && e ? text) (lib.toList (unit.serviceConfig.ExecStartPre or [ ]));
  unitCommands = lib.unique (lib.concatMap (s: commandsIn s.text) scripts);

  # The later upstream script (master, after 359f8630), reduced to the
  # commands it runs and how: the token file may be `TOKEN=…` (deprecated)
  # or the raw token, and a change of token or labels re-registers.
  laterScript = ''
    if grep -q -m1 -E '^[[:space:]]*TOKEN=' "$CREDENTIALS_DIRECTORY/token"; then
      sed -n -E 's/^[[:space:]]*TOKEN=//p' "$CREDENTIALS_DIRECTORY/token" | tail -n1 > "$RUNTIME_DIRECTORY/token"
    fi
    current="$(sha256sum "$token_file" | cut -d' ' -f1)"
    stored="$(cat "$hash_file" 2>/dev/null || echo "")"
    wanted="$(echo "$labels" | sort)"
    rm -v "$INSTANCE_DIR/.runner" || true
    printf '%s' "$current" > "$hash_file"
  '';
in
t.all [
  (
    if lockedNixpkgs == kinds.checkedForNixpkgs then
      true
    else
      t.fail "flake.lock pins the runners' upstream revision" ''
        flake.lock pins nixpkgs at ${lockedNixpkgs}, but what upstream's runner units
        run by name (modules/runner-kinds.nix) was last checked for ${kinds.checkedForNixpkgs}.
        Run checks/modules/sync-contract.sh on a nixpkgs checkout at ${lockedNixpkgs},
        update modules/runner-kinds.nix and checks/modules/contract.nix from what it
        reports, then set checkedForNixpkgs to ${lockedNixpkgs}.''
  )
  (t.ok "the command extraction sees commands and skips comments and builtins" (
    commandsIn ''
      # rm is in a comment here
      x="$(cat f | sort)"; mkdir -p d && echo ok
    '' == [
      "cat"
      "mkdir"
      "sort"
    ]
  ))
  (t.ok "the evaluated gitea-actions unit has a registration script evaluation can read" (scripts != [ ]))
  (t.eq "every command the evaluated registration script runs is required of the env" [ ] (notRequired unitCommands))
  (t.eq "the later upstream registration script runs grep, sed, tail, sha256sum and cut" [
    "cat"
    "cut"
    "grep"
    "rm"
    "sed"
    "sha256sum"
    "sort"
    "tail"
  ] (commandsIn laterScript))
  (t.eq "every command the later upstream registration script runs is required of the env" [ ] (
    notRequired (commandsIn laterScript)
  ))
]
