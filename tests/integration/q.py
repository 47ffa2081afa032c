#!/usr/bin/env python3
"""Queries over a mosquitto_sub -v log for the integration tests (lines: "<retain> <topic>
<payload>"): final reports, counts, members, state sequences."""
import json, sys

FINAL = ("success", "failed", "rejected")

def messages(log, topic):
    out = []
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.rstrip("\n").split(" ", 2)
            if len(parts) == 3 and parts[1] == topic:
                try:
                    out.append((parts[0], json.loads(parts[2])))
                except ValueError:
                    out.append((parts[0], None))
    return out

def get(obj, path):
    for k in path.split("."):
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj

cmd = sys.argv[1]
if cmd == "final":  # LOG TOPIC: the last final report on TOPIC, exit 1 when none yet
    m = [p for _, p in messages(sys.argv[2], sys.argv[3])
         if isinstance(p, dict) and p.get("state") in FINAL]
    if not m:
        sys.exit(1)
    print(json.dumps(m[-1]))
elif cmd == "count":  # LOG TOPIC STATE: how many reports on TOPIC have that state
    print(sum(1 for _, p in messages(sys.argv[2], sys.argv[3])
              if isinstance(p, dict) and p.get("state") == sys.argv[4]))
elif cmd == "n":  # LOG TOPIC: how many messages arrived on TOPIC
    print(len(messages(sys.argv[2], sys.argv[3])))
elif cmd == "last":  # LOG TOPIC: the last message on TOPIC, exit 1 when none
    m = messages(sys.argv[2], sys.argv[3])
    if not m or m[-1][1] is None:
        sys.exit(1)
    print(json.dumps(m[-1][1]))
elif cmd == "get":  # JSON PATH: one member, dotted path; empty when absent
    try:
        v = get(json.loads(sys.argv[2]), sys.argv[3])
    except ValueError:
        v = None
    print("" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v))
elif cmd == "states":  # LOG TOPIC DEPLOYMENT: the node's states in that deployment, in order
    seq, last_state, last_pct, last_attempt, ok = [], None, -1, None, True
    for _, p in messages(sys.argv[2], sys.argv[3]):
        if not isinstance(p, dict) or p.get("deployment") != sys.argv[4]:
            continue
        st = p.get("state")
        if st != last_state:
            seq.append(st)
            last_state, last_pct = st, -1
        if p.get("attempt") != last_attempt:  # a retry starts over
            last_attempt, last_pct = p.get("attempt"), -1
        pct = p.get("progress")
        if pct is not None:
            if not isinstance(pct, int) or pct < last_pct or pct > 100:
                print("progress went %r -> %r in state %s" % (last_pct, pct, st),
                      file=sys.stderr)
                ok = False
            last_pct = pct
    print(" ".join(str(s) for s in seq))
    sys.exit(0 if ok else 1)
