# Where the goal commits, the same connection marks the closure known-good, once the
# target itself shows it committed (`@@mark`, the record as `record=`, `@@mark-exit N`).
if [ -n "$mark" ] && [ "$s" = committed ] && [ "$running" = "$expect" ] &&
  [ "$profile" = "$closure" ] && mkdir "$dir/marking" 2>/dev/null; then
  echo "@@mark"
  out=$(printf '%s\n' "$evidence" | waymark_run known-good mark "$target" "$closure" --rev "$rev" --evidence - --json)
  rc=$?
  printf '%s\n' "$out" | relay record
  [ $rc != 0 ] || : > "$dir/marked"; rmdir "$dir/marking"; echo "@@mark-exit $rc"
fi
