# The end of a script that stays to run what it is sent, one script after another: lines
# up to `@@run`, run with no stdin, then its exit status (`@@status N`) and `@@ran`. The
# scripts relay what they print of other programs (`relay`); what the shell itself says
# on stderr comes after, relayed as `err=`. It ends when its input does.
e=$(mktemp) || exit 1
trap 'rm -f "$e"' EXIT
while next=""; do
  while IFS= read -r line || exit 0; [ "$line" != @@run ]; do next="$next$line
"; done
  (eval "$next") </dev/null 2>"$e"; rc=$?
  [ ! -s "$e" ] || relay err < "$e"
  echo "@@status $rc"; echo "@@ran"
done
