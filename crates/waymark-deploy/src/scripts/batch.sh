# Runs the scripts $s0 … $s(n-1) side by side (each in a subshell, its stderr in its
# stdout) and prints, in order, `@@item I`, the output of script I (`item=`) and
# `@@item-exit STATUS`.
b=$(mktemp -d) || exit 1
i=0
while [ "$i" -lt "$n" ]; do
  eval "script=\$s$i"
  { (eval "$script") > "$b/$i" 2>&1; echo $? > "$b/$i.rc"; } < /dev/null &
  i=$(( i + 1 ))
done
wait
i=0
while [ "$i" -lt "$n" ]; do
  echo "@@item $i"
  relay item < "$b/$i"
  rc=255; read -r rc < "$b/$i.rc"; echo "@@item-exit $rc"
  i=$(( i + 1 ))
done
rm -rf "$b"
