# Tells the agent in $dir to restore now (a gate failed after activation).
mv "$dir/window" "$dir/aborted" && { read -r w < "$dir/waiter" && kill "$w" 2>/dev/null; true; }
