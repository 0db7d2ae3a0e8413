# Marks the closure of the agent in $dir known-good on the target, unless the deploy
# that committed it did or does (parameters: how, `stdin` (the evidence), `file` (the
# agent's evidence.json) or `none` (only read the latest mark); waymark, target,
# closure, rev). Waits (at most 30 s) for a confirmation shell still running there,
# then marks under $dir/marking. `@@found` or `@@busy`, and the record as `record=`.
latest() { waymark_run known-good latest "$target" --json; }
n=0
while [ ! -e "$dir/marked" ] && [ "$n" -lt 150 ]; do
  c=; { read -r c < "$dir/confirmer"; } 2>/dev/null
  [ -n "$c" ] && kill -0 "$c" 2>/dev/null || break
  sleep 0.2; n=$(( n + 1 ))
done
if [ -e "$dir/marked" ]; then
  echo "@@found"; out=$(latest); rc=$?; printf '%s\n' "$out" | relay record; exit $rc
fi
# A lock whose marker died (a mark takes a second) is taken after a minute.
[ -z "$(find "$dir/marking" -maxdepth 0 -mmin +1 2>/dev/null)" ] || rmdir "$dir/marking"
mkdir "$dir/marking" 2>/dev/null || { echo "@@busy"; exit 0; }
case $how in
  stdin) out=$(waymark_run known-good mark "$target" "$closure" --rev "$rev" --evidence - --json) ;;
  file) out=$(waymark_run known-good mark "$target" "$closure" --rev "$rev" --evidence - --json < "$dir/evidence.json") ;;
  *) out=$(latest) ;;
esac
rc=$?
printf '%s\n' "$out" | relay record
[ $rc != 0 ] || : > "$dir/marked"
rmdir "$dir/marking"; exit $rc
