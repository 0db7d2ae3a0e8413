# Runs the script $body under `timeout $limit` (a check that hangs ends in time).
exec timeout "$limit" sh -c "$body"
