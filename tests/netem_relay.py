"""A userspace stand-in for ``tc qdisc ... netem loss P delay D`` between two interfaces.

The kernels these tests run on do not always have sch_netem (CONFIG_NET_SCH_NETEM),
so the lab (tests/netlab.py) puts an impaired host behind this relay instead: it
reads every Ethernet frame arriving on interface A with an AF_PACKET socket, drops
it with probability ``--loss``, and writes it out of interface B ``--delay`` seconds
later; frames from B to A pass unchanged.  That is what netem on the host's own
interface does: it shapes what the host sends (egress), not what it receives.
Frames keep their order, as netem without jitter does.  The interfaces live in the lab's own "switch" namespace, so
nothing here can reach a real network.

Run as: ``python netem_relay.py IFACE_A IFACE_B --loss 0.2 --delay 0.05 --seed 1``
(root, inside that namespace).  It prints "ready" once both sockets are bound and
runs until killed; on SIGTERM it prints how many frames it passed and dropped.
"""

from __future__ import annotations

import argparse
import heapq
import random
import selectors
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # sll_pkttype of frames this host sent itself


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--both", action="store_true", help="impair what the host receives too (harsher than netem on one interface)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)

    socks = {}
    for name in (args.a, args.b):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((name, ETH_P_ALL))
        s.setblocking(False)
        socks[name] = s
    other = {args.a: socks[args.b], args.b: socks[args.a]}
    sel = selectors.DefaultSelector()
    for name, s in socks.items():
        sel.register(s, selectors.EVENT_READ, name)

    counts = {"passed": 0, "dropped": 0}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    queue: list = []  # (due, seq, out socket, frame)
    seq = 0
    print("ready", flush=True)
    while not stop:
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            _, _, out, frame = heapq.heappop(queue)
            try:
                out.send(frame)
            except OSError:
                counts["dropped"] += 1  # interface down (a partition): lost, as on a wire
        timeout = max(0.0, queue[0][0] - now) if queue else 0.5
        for key, _ in sel.select(timeout):
            s = key.fileobj
            while True:
                try:
                    frame, addr = s.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if addr[2] == PACKET_OUTGOING:
                    continue  # our own writes on this interface
                if key.data != args.a and not args.both:  # toward the impaired host: untouched
                    try:
                        other[key.data].send(frame)
                    except OSError:
                        pass
                    continue
                if rng.random() < args.loss:
                    counts["dropped"] += 1
                    continue
                counts["passed"] += 1
                seq += 1
                heapq.heappush(queue, (time.monotonic() + args.delay, seq, other[key.data], frame))
    print(f"passed {counts['passed']} dropped {counts['dropped']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
