# The end of a script that runs the script sent to it next: lines up to `@@run`. The
# shell's `read` takes a byte at a time, so what follows is left on stdin for it.
next=""
while IFS= read -r line; do
  [ "$line" = @@run ] && { eval "$next"; exit; }
  next="$next$line
"
done
