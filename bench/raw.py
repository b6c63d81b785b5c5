"""The raw-pyzmq baseline: the same workloads as p2pd's, with nothing but sockets and a codec.

Each role runs in its own process (``python -m bench.raw ROLE ...``), talks
over loopback TCP, and prints one JSON line of results.  `run_*` start the
processes and collect the figures.  The envelope is the shape p2pd sends
(about 160-290 bytes); the codec is stdlib ``json`` as in
../shared/reference/baselines.md, or ``orjson`` (what p2pd uses) to show
how much of the gap is the codec.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

ENVELOPE = {
    "type": "MESSAGE", "id": "0193a4f2c1e07d4b9a2c5e8f10b3d6a7", "sender_id": "9f2c4e8a1b3d5f7092c4e6a8b0d2f4e6",
    "sender_name": "alice", "timestamp": "2026-11-25T11:44:14.123Z", "data": {"text": "hello"},
    "target_id": "3b5d7f9a1c3e5f7b9d1f3a5c7e9b1d3f",
}


def _codec(name: str):
    if name == "orjson":
        import orjson

        return orjson.dumps, orjson.loads
    encode = json.JSONEncoder(separators=(",", ":")).encode  # built once: json.dumps with options builds one per call
    return (lambda obj: encode(obj).encode()), json.loads


def _print(result: dict) -> None:
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------- roles (child processes)


def role_ack_server(codec: str, n: int) -> None:
    """ROUTER: decode each message, answer an ACK envelope for it."""
    import zmq

    dumps, loads = _codec(codec)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    _print({"port": port})
    ack = dict(ENVELOPE, type="ACK", data={"upto": 0})
    recv, send, more = sock.recv, sock.send, zmq.SNDMORE
    for _ in range(n):  # plain recv/send: recv_multipart costs a getsockopt per part
        rid = recv()
        msg = loads(recv())
        ack["data"] = {"upto": msg["data"]["seq"]}
        send(rid, more)
        send(dumps(ack))
    sock.close(linger=1000)
    ctx.term()


def role_ack_client(codec: str, port: int, n: int, window: int) -> None:
    """DEALER: keep ``window`` messages unacknowledged, encode each, decode each ACK."""
    import zmq

    dumps, loads = _codec(codec)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(f"tcp://127.0.0.1:{port}")
    sent = acked = 0
    send, recv = sock.send, sock.recv
    t0 = time.perf_counter()
    while acked < n:
        while sent < n and sent - acked < window:
            sent += 1
            send(dumps(dict(ENVELOPE, data={"text": "hello", "seq": sent})))
        acked = max(acked, loads(recv())["data"]["upto"])
    dt = time.perf_counter() - t0
    _print({"msgs": n, "seconds": dt, "rate": n / dt})
    sock.close(linger=0)
    ctx.term()


def role_echo_server(codec: str, n: int) -> None:
    import zmq

    dumps, loads = _codec(codec)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    _print({"port": port})
    for _ in range(n):
        rid = sock.recv()
        ping = loads(sock.recv())
        sock.send(rid, zmq.SNDMORE)
        sock.send(dumps(dict(ENVELOPE, type="PONG", data={"ping_id": ping["id"]})))
    sock.close(linger=1000)
    ctx.term()


def role_ping_client(codec: str, port: int, n: int) -> None:
    import zmq

    dumps, loads = _codec(codec)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(f"tcp://127.0.0.1:{port}")
    rtts = []
    for i in range(n):
        t = time.perf_counter()
        sock.send(dumps(dict(ENVELOPE, type="PING", id=f"{i:032x}", data={})))
        loads(sock.recv())
        rtts.append(time.perf_counter() - t)
    _print({"rtts_us": [round(r * 1e6, 1) for r in rtts]})
    sock.close(linger=0)
    ctx.term()


def role_pub(codec: str, n: int, subscribers: int) -> None:
    """PUB: wait until every subscriber is attached (XPUB tells), then send ``n`` encoded envelopes."""
    import zmq

    dumps, _ = _codec(codec)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.XPUB)
    sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # one notice per subscriber, not per topic
    sock.setsockopt(zmq.SNDHWM, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    _print({"port": port})
    attached = 0
    while attached < subscribers:
        if sock.recv()[0] == 1:
            attached += 1
    _print({"attached": attached})
    for i in range(n):
        sock.send(dumps(dict(ENVELOPE, type="BROADCAST", data={"text": "hello", "bseq": i + 1})))
    sock.close(linger=30_000)
    ctx.term()


def role_sub(codec: str, port: int, n: int) -> None:
    import zmq

    _, loads = _codec(codec)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(f"tcp://127.0.0.1:{port}")
    for _ in range(n):
        loads(sock.recv())
    _print({"done": time.time()})
    sock.close(linger=0)
    ctx.term()


def role_idle(codec: str) -> None:
    """Python with zmq imported and one socket bound: the floor for a daemon's RSS."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind_to_random_port("tcp://127.0.0.1")
    _codec(codec)
    _print({"ready": True})
    sys.stdin.readline()
    sock.close(linger=0)
    ctx.term()


# ---------------------------------------------------------------------------- drivers (in the bench process)


def _spawn(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench.raw", *map(str, args)], stdout=subprocess.PIPE, text=True)


def _line(proc: subprocess.Popen, timeout_s: float = 120.0) -> dict:
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout_s)
        raise RuntimeError(f"baseline role {proc.args[3]} exited ({proc.returncode}) without a result")
    return json.loads(line)


def _finish(*procs: subprocess.Popen, timeout_s: float = 120.0) -> None:
    for p in procs:
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_acked(n: int, window: int = 1000, codec: str = "json") -> float:
    server = _spawn("ack_server", codec, n)
    try:
        port = _line(server)["port"]
        client = _spawn("ack_client", codec, port, n, window)
        result = _line(client, 300)
        _finish(client, server)
        return result["rate"]
    finally:
        _finish(server, timeout_s=0)


def run_pingpong(n: int, codec: str = "json") -> list[float]:
    server = _spawn("echo_server", codec, n)
    try:
        port = _line(server)["port"]
        client = _spawn("ping_client", codec, port, n)
        result = _line(client, 300)
        _finish(client, server)
        return result["rtts_us"]
    finally:
        _finish(server, timeout_s=0)


def run_fanout(n: int, subscribers: int = 10, codec: str = "json") -> float:
    """Delivered messages per second across all subscribers (n x subscribers / time to the last)."""
    pub = _spawn("pub", codec, n, subscribers)
    subs = []
    try:
        port = _line(pub)["port"]
        subs = [_spawn("sub", codec, port, n) for _ in range(subscribers)]
        _line(pub)  # every subscriber attached
        t0 = time.time()
        done = max(_line(s, 300)["done"] for s in subs)
        _finish(pub, *subs)
        return n * subscribers / (done - t0)
    finally:
        _finish(pub, *subs, timeout_s=0)


def idle_rss(codec: str = "json") -> int:
    from bench.cluster import rss_bytes

    proc = subprocess.Popen([sys.executable, "-m", "bench.raw", "idle", codec], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        _line(proc)
        time.sleep(0.5)  # let the interpreter settle; nothing waits on this
        return rss_bytes(proc.pid)
    finally:
        proc.stdin.close()
        _finish(proc, timeout_s=10)


ROLES = {
    "ack_server": (role_ack_server, (str, int)),
    "ack_client": (role_ack_client, (str, int, int, int)),
    "echo_server": (role_echo_server, (str, int)),
    "ping_client": (role_ping_client, (str, int, int)),
    "pub": (role_pub, (str, int, int)),
    "sub": (role_sub, (str, int, int)),
    "idle": (role_idle, (str,)),
}

if __name__ == "__main__":
    fn, types = ROLES[sys.argv[1]]
    fn(*(t(a) for t, a in zip(types, sys.argv[2:])))
