# Whether the agent in $dir started (after the launch's connection was lost).
test -e "$dir/state" && echo started=yes; echo looked=yes
