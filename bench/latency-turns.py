#!/usr/bin/env python3
"""Reads the log of bench/latency-proxy.py (--log) and counts, per deploy, what crossed
the delayed links: the connections, and on each the turns, a turn being a burst from
ssh to the host that follows the host's last burst (or opens the connection): a request
that waited for an answer, or the start of one. Keepalives count too.

Deploys are told apart by time: the connections of one deploy overlap (its masters live
until its end), and the benchmark edits the flake between two deploys.

    latency-turns.py LOG [--first N]    # JSON on stdout, one object per deploy
    latency-turns.py LOG --one          # the whole log is one deploy

`sequential_round_trips`: the most of those turns that ran one after the other, each
started once the previous one's answer had arrived (turns side by side count once): the
round trips on the deploy's longest chain over the delayed links. Where the deploy waits
on the network, that chain is its critical path; work done meanwhile (the flake's
evaluation while the masters open) hides part of it.

Beside the turns, `in_flight_round_trips`: the time during which at least one chunk was
on its way over a delayed link, in round trips (2 x DELAY). It is an upper bound of the
round trips on the deploy's critical path (traffic that overlapped other work, such as
masters opened while the flake evaluates, counts in it); the benchmark's other estimate,
(wall time at DELAY - wall time at no delay) / (2 x DELAY), counts only what the deploy
waited for.
"""
import argparse
import json
import sys
from collections import defaultdict


def connections(path):
    conns = defaultdict(lambda: {"events": []})
    with open(path) as f:
        for line in f:
            try:
                e = json.loads(line)
            except ValueError:
                continue  # a line cut by a proxy killed mid-write
            c = conns[e["c"]]
            c["host"] = e.get("h")
            if e["e"] == "open":
                c["delay"] = e.get("delay", 0.0)
            c["events"].append(e)
    out = []
    for cid, c in conns.items():
        ev = sorted(c["events"], key=lambda e: e["t"])
        # The connection's end is when ssh let it go (its end of the pipe, or SIGHUP):
        # the proxy's own close comes a round trip later, and may be after the next
        # deploy's first connection.
        ends = [e["t"] for e in ev if e["e"] in (">eof", "hup")]
        out.append({"id": cid, "host": c.get("host"), "delay": c.get("delay", 0.0),
                    "start": ev[0]["t"], "end": ends[0] if ends else ev[-1]["t"],
                    "events": ev})
    return sorted(out, key=lambda c: c["start"])


def episodes(conns):
    groups, end = [], None
    for c in conns:
        if end is None or c["start"] > end:
            groups.append([])
        groups[-1].append(c)
        end = c["end"] if end is None else max(end, c["end"])
    return groups


def union_length(intervals):
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def sequential(spans):
    """The most turns on delayed links that ran one after the other, each started once
    the previous one's answer had arrived: the round trips the deploy went through in
    sequence (turns on connections side by side count once). Greedy by earliest end."""
    count, free_at = 0, None
    for start, end in sorted(spans, key=lambda s: s[1]):
        if free_at is None or start >= free_at:
            count, free_at = count + 1, end
    return count


def describe(group):
    t0 = group[0]["start"]
    rows, in_flight, delay, spans = [], [], 0.0, []
    for c in group:
        turns, last, chunks = 0, None, {">": 0, "<": 0}
        nbytes = {">": 0, "<": 0}
        for e in c["events"]:
            d = e["e"]
            if d not in (">", "<"):
                continue
            chunks[d] += 1
            nbytes[d] += e.get("n", 0)
            if d == ">" and last != ">":
                turns += 1
                if c["delay"] > 0:
                    # From the request's start to its answer's arrival at ssh (or, with
                    # no answer, to the request's arrival at the host).
                    spans.append([e["t"], e["t"] + c["delay"]])
            elif d == "<" and last == ">" and c["delay"] > 0:
                spans[-1][1] = e["t"] + c["delay"]
            last = d
            if c["delay"] > 0:
                in_flight.append((e["t"], e["t"] + c["delay"]))
        delay = max(delay, c["delay"])
        rows.append({"host": c["host"], "delayed": c["delay"] > 0,
                     "opened_at_s": round(c["start"] - t0, 3),
                     "open_for_s": round(c["end"] - c["start"], 3),
                     "turns": turns, "chunks_out": chunks[">"], "chunks_in": chunks["<"],
                     "bytes_out": nbytes[">"], "bytes_in": nbytes["<"]})
    delayed = [r for r in rows if r["delayed"]]
    return {
        "duration_s": round(max(c["end"] for c in group) - t0, 3),
        "connections": len(rows),
        "delayed_connections": len(delayed),
        "delayed_turns": sum(r["turns"] for r in delayed),
        "sequential_round_trips": sequential(spans),
        "in_flight_round_trips": round(union_length(in_flight) / (2 * delay), 1) if delay else None,
        "per_connection": rows,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log")
    parser.add_argument("--first", type=int, help="only the first N deploys")
    parser.add_argument("--one", action="store_true",
                        help="the whole log is one deploy (whose connections may not overlap)")
    args = parser.parse_args()
    conns = connections(args.log)
    groups = ([conns] if conns else []) if args.one else episodes(conns)
    if args.first is not None:
        groups = groups[: args.first]
    if not groups:
        sys.exit(f"latency-turns: no connection in {args.log}: was the proxy given --log?")
    json.dump([describe(g) for g in groups], sys.stdout, indent=1)
    print()
