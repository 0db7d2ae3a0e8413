#!/usr/bin/env python3
"""Clients of bench/serve.sh (Python standard library only).

fill BASE TOKEN N       N deployments, each with one queued job (8 keep-alive connections).
sse BASE TOKEN RECONNECTS
                        An SSE client of /v1/events that drops its connection after a few
                        events and resumes with Last-Event-ID, RECONNECTS times, while a
                        second thread submits jobs; then compares every id it saw with the
                        JSON polling list: prints how many were lost and duplicated.
                        BASE may name several replicas (comma-separated): each
                        reconnection goes to the next one.
"""
import http.client
import json
import random
import sys
import threading
import time
from urllib.parse import urlparse


def conn(base):
    u = urlparse(base)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


def call(c, token, method, path, body=None, headers=None):
    h = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    h.update(headers or {})
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=h)
    r = c.getresponse()
    data = r.read()
    return r.status, (json.loads(data) if data else None)


def fill(base, token, n):
    def worker(k, count):
        c = conn(base)
        for i in range(k, n, count):
            s, b = call(c, token, "PUT", f"/v1/deployments/q{i}", {"flake": "/srv/fleet", "hosts": [f"h{i}"]})
            assert s == 200, (s, b)
            s, b = call(c, token, "POST", f"/v1/deployments/q{i}/jobs", {"rev": f"{i:040x}"})
            assert s == 201, (s, b)

    threads = [threading.Thread(target=worker, args=(k, 8)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def sse(bases, token, reconnects):
    bases = bases.split(",")
    base = bases[0]
    stop = threading.Event()

    def submitter():
        c = conn(base)
        call(c, token, "PUT", "/v1/deployments/sse", {"flake": "/srv/fleet", "hosts": ["sse-host"]})
        i = 0
        while not stop.is_set():
            call(c, token, "POST", "/v1/deployments/sse/jobs", {"rev": f"{i:040x}"})
            i += 1
            time.sleep(0.005)

    t = threading.Thread(target=submitter)
    t.start()
    seen = []
    last = None
    rnd = random.Random(7)
    for k in range(reconnects):
        c = conn(bases[k % len(bases)])
        h = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last is not None:
            h["Last-Event-ID"] = str(last)
        c.request("GET", "/v1/events", headers=h)
        r = c.getresponse()
        want = rnd.randint(1, 6)
        got = 0
        ident = None
        while got < want:
            line = r.fp.readline().decode().rstrip("\n")
            if line.startswith("id: "):
                ident = int(line[4:])
            elif line == "" and ident is not None:
                seen.append(ident)
                last = ident
                ident = None
                got += 1
        c.close()  # drop the connection mid-stream
    stop.set()
    t.join()
    # Every event up to the last one seen, from the polling fallback.
    c = conn(base)
    expected = []
    after = 0
    while True:
        s, b = call(c, token, "GET", f"/v1/events?after={after}&limit=1000")
        ids = [e["seq"] for e in b["events"]]
        expected += [i for i in ids if i <= last]
        if not ids or ids[-1] >= last:
            break
        after = b["next_after"]
    lost = len(set(expected) - set(seen))
    dup = len(seen) - len(set(seen))
    print(f"SSE: {reconnects} reconnects over {len(bases)} replica(s), {len(seen)} events, lost {lost}, duplicated {dup}, "
          f"in order: {seen == sorted(seen)}")


if __name__ == "__main__":
    cmd, base, token = sys.argv[1:4]
    if cmd == "fill":
        fill(base, token, int(sys.argv[4]))
    elif cmd == "sse":
        sse(base, token, int(sys.argv[4]))
    else:
        sys.exit(f"unknown command {cmd}")
