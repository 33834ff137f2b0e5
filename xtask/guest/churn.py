#!/usr/bin/env python3
# The soak's churn (xtask/guest/soak.sh), three roles:
#   churn.py send SECS LOG   in the churn pod: bursts of new UDP conversations (a new source port
#                         each, destination ports 6000-6199 on the server and the lb-soak VIP's
#                         7000), then silences long enough for their datapath flows to idle out;
#                         prints what it sent; LOG gets "sport dst dport packets" per conversation.
#   churn.py sink         in the server pod: receives on those ports (no ICMP errors back).
#   churn.py count PORT KEEP  reads watch's JSON lines on stdin, touches /tmp/watch.ready at
#                         "ready", prints at EOF how many packets it saw in all and from the
#                         datapath port PORT (the churn pod's), by verdict; KEEP gets a short
#                         JSON line per packet from PORT.
import json
import random
import selectors
import socket
import sys
import time

SERVER, VIP = "10.244.2.5", "10.244.1.44"
PORTS = range(6000, 6200)


def send(secs, log):
    end = time.monotonic() + secs
    rng = random.Random(14)
    sent = conversations = bursts = errors = 0
    while time.monotonic() < end:
        bursts += 1
        burst_end = min(end, time.monotonic() + rng.uniform(8, 20))
        while time.monotonic() < burst_end:
            to = (VIP, 7000) if rng.random() < 0.2 else (SERVER, rng.choice(PORTS))
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", 0))
            conversations += 1
            n = 0
            for _ in range(rng.randint(1, 4)):
                try:
                    s.sendto(b"detrace-soak" * 5, to)
                    n += 1
                except OSError:
                    errors += 1
            sent += n
            log.write(f"{s.getsockname()[1]} {to[0]} {to[1]} {n}\n")
            s.close()
            time.sleep(0.1)
        # Silence: flows idle out of the datapath after ~10 s.
        time.sleep(min(max(0.0, end - time.monotonic()), rng.uniform(12, 20)))
    print(f"sent {sent} conversations {conversations} bursts {bursts} send_errors {errors}")


def sink():
    sel = selectors.DefaultSelector()
    for p in list(PORTS) + [7000]:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", p))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            try:
                while True:
                    key.fileobj.recv(2048)
            except BlockingIOError:
                pass


def count(port, keep):
    c = {"lines": 0, "packets": 0, "churn": 0, "malformed": 0, "after_upcall": 0,
         "verdicts": {}, "churn_verdicts": {}, "ready": False}
    for line in sys.stdin:
        if line.strip() == "ready":
            c["ready"] = True
            open("/tmp/watch.ready", "w").close()
            continue
        c["lines"] += 1
        try:
            p = json.loads(line)
        except ValueError:
            c["malformed"] += 1
            continue
        c["packets"] += 1
        v = p.get("verdict", "?")
        c["verdicts"][v] = c["verdicts"].get(v, 0) + 1
        c["after_upcall"] += bool(p.get("after_upcall"))
        if p.get("in_port") == port:
            c["churn"] += 1
            c["churn_verdicts"][v] = c["churn_verdicts"].get(v, 0) + 1
            k = p.get("packet", {})
            path = p.get("path") or [{}]
            keep.write(json.dumps({"time": p.get("time"), "verdict": v, "after_upcall": bool(p.get("after_upcall")),
                                   "src": k.get("src"), "dst": k.get("dst"), "sport": k.get("sport"), "dport": k.get("dport"),
                                   "proto": k.get("proto"), "len": p.get("len"), "passes": len(path),
                                   "recirc0": path[0].get("recirc_id")}) + "\n")
    print(json.dumps(c))


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "send":
        with open(sys.argv[3], "w") as log:
            send(float(sys.argv[2]), log)
    elif role == "sink":
        sink()
    else:
        with open(sys.argv[3], "w") as keep:
            count(int(sys.argv[2]), keep)
