"""``python -m bench.codec``: a micro-benchmark of the wire codec's decode (p2pd/protocol.py).

What the simulator's profile of a full mesh is made of: PEERS with one entry per alive peer
(200 here), and the small envelopes of every turn (PING, PONG, ACK, MESSAGE).  Each is encoded
once and decoded many times, as the receivers of a gossip round do (so the codec's caches of
strings it checked before are warm, as in a running node).  Prints microseconds per decode
(best of ``--repeat`` runs) and, for PEERS, per entry.  Not a test: compare before and after a
change, in the same minutes (the figures move with the machine's load).
"""

from __future__ import annotations

import argparse
import json
import timeit

from p2pd import protocol as P

WALL = 1_700_000_000.0


def peers_frame(n: int, keys: bool) -> bytes:
    entries = [{"id": f"n{i:03d}-id", "name": f"n{i:03d}", "addr": "127.0.0.1", "port": 20000 + 2 * i, "pub_port": 20001 + 2 * i,
                "key": ("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7" if keys else None)} for i in range(n)]
    return P.encode(P.make(P.PEERS, "n999-id", "n999", WALL, {"peers": entries}, None))


def small_frames() -> dict[str, bytes]:
    beacon = {"bseq": 12, "boldest": 1, "epoch": "e0123456789abcdef"}
    return {
        "PING": P.encode(P.make(P.PING, "n001-id", "n001", WALL, dict(beacon), "n002-id")),
        "PONG": P.encode(P.make(P.PONG, "n001-id", "n001", WALL, {"ping_id": P.new_message_id(WALL), **beacon}, "n002-id")),
        "ACK": P.encode(P.make(P.ACK, "n001-id", "n001", WALL, {"upto": 41}, "n002-id")),
        "MESSAGE": P.encode(P.make(P.MESSAGE, "n001-id", "n001", WALL, {"text": "m12.3", "seq": 7, "base": 5, "epoch": "e0123456789abcdef"},
                                   "n002-id")),
    }


def measure(raw: bytes, number: int, repeat: int) -> float:
    P.decode(raw)  # warm the caches, as a running node's are
    return min(timeit.repeat(lambda: P.decode(raw), number=number, repeat=repeat)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.codec", description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=200, help="entries in the PEERS frame")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    out = {}
    for keys in (False, True):
        raw = peers_frame(args.entries, keys)
        us = measure(raw, max(1, 20000 // args.entries), args.repeat)
        name = f"PEERS[{args.entries}]" + (" with keys" if keys else "")
        out[name] = {"us": round(us, 2), "us_per_entry": round(us / max(1, args.entries), 3), "bytes": len(raw)}
    for name, raw in small_frames().items():
        out[name] = {"us": round(measure(raw, 20000, args.repeat), 3), "bytes": len(raw)}
    if args.json:
        print(json.dumps(out))
    else:
        for name, r in out.items():
            extra = f"  ({r['us_per_entry']:.3f} us/entry)" if "us_per_entry" in r else ""
            print(f"{name:24} {r['us']:9.2f} us  {r['bytes']:6d} bytes{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
