# Marks a closure known-good on a build host with the evidence a target's mark carries
# (parameters: waymark, target, closure, rev, evidence); what it says as `out=`.
out=$(printf '%s\n' "$evidence" | waymark_run known-good mark "$target" "$closure" --rev "$rev" --evidence - --json 2>&1)
rc=$?
printf '%s\n' "$out" | relay out
exit $rc
