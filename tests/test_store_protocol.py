"""The storage protocol: both stores implement all of it, answer alike, and the core sees only it.

* Every name of `p2pd.storage.Storage` exists on `Store` and `MemoryStore` with the same
  parameters (names, kinds, defaults), read with `inspect`.
* A seeded random sequence of the calls the core makes (with commits and kill -9 restarts in
  between) gives the same answer from both stores, call for call: SQLite is the reference.
* The core's modules and the in-memory store import nothing of SQLite, files, clocks or
  randomness (read with `ast`, as test_import_graph.py does).
"""

from __future__ import annotations

import ast
import inspect
import random
from collections import Counter
from pathlib import Path

import pytest

from p2pd.memstore import MemoryStore
from p2pd.storage import Storage
from p2pd.store import Store
from storekit import store_kit  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent


def protocol_names() -> dict[str, object]:
    """The names the protocol declares: methods, properties, and annotated attributes."""
    names = {k: v for k, v in vars(Storage).items() if not k.startswith("_")}
    names.update({k: "attribute" for k in Storage.__annotations__})
    return names


@pytest.mark.parametrize("impl", [Store, MemoryStore])
def test_each_store_has_every_name_of_the_protocol_with_its_signature(impl, tmp_path):
    names = protocol_names()
    assert len(names) > 25 and "commit" in names and "epoch" in names  # the protocol was read
    instance = Store(tmp_path / "s.db") if impl is Store else MemoryStore(random.Random(0).randbytes)
    for name, declared in names.items():
        assert hasattr(instance, name), f"{impl.__name__} lacks {name}"
        if declared == "attribute":
            assert not callable(getattr(instance, name)), name
        elif isinstance(declared, property):
            assert isinstance(inspect.getattr_static(impl, name), property), f"{impl.__name__}.{name} is not a property"
        else:
            want = inspect.signature(declared).parameters
            got = inspect.signature(getattr(impl, name)).parameters
            assert [(p.name, p.kind, p.default) for p in got.values()] == [(p.name, p.kind, p.default) for p in want.values()], \
                f"{impl.__name__}.{name}{inspect.signature(getattr(impl, name))} is not {name}{inspect.signature(declared)}"


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


@pytest.mark.parametrize("module", ["storage", "memstore"])
def test_the_protocol_and_the_memory_store_touch_no_file_clock_or_randomness(module):
    imported = imported_modules(ROOT / "p2pd" / f"{module}.py")
    assert imported and not imported & {"sqlite3", "os", "time", "random", "pathlib", "shutil", "io", "zmq", ".store"}


@pytest.mark.parametrize("module", ["delivery", "messaging"])
def test_the_core_knows_its_store_only_by_the_protocol(module):
    imported = imported_modules(ROOT / "p2pd" / f"{module}.py")
    assert ".storage" in imported and ".store" not in imported and "sqlite3" not in imported


# ---------------------------------------------------------------------------- the contract, on both


def test_row_numbers_only_grow_even_after_everything_was_pruned(store_kit):  # noqa: F811
    s = store_kit.open()
    first = s.add_message("in", "MESSAGE", "m1", "p", "p", "p", "me", "hi", "ts", 1.0)
    second = s.add_message("in", "MESSAGE", "m2", "p", "p", "p", "me", "hi", "ts", 2.0, defer=True)
    assert 0 < first < second == s.last_cursor
    assert s.add_message("in", "MESSAGE", "m1", "p", "p", "p", "me", "hi", "ts", 3.0) == 0  # a duplicate takes no number
    assert s.last_cursor == second
    assert s.prune(10_000.0, max_age_s=1.0, max_messages=10) == 2  # everything is old
    s.commit()
    s = store_kit.restart(s)
    assert s.history() == [] and s.last_cursor == second
    assert s.add_message("in", "MESSAGE", "m3", "p", "p", "p", "me", "x", "ts", 4.0) == second + 1


def test_a_crash_loses_the_whole_turn_and_nothing_committed(store_kit):  # noqa: F811
    s = store_kit.open()
    s.add_outbox("bob", 1, "a", "one", "ts", 1.0, 100.0)
    s.add_message("out", "MESSAGE", "a", "bob", "me", "me", "bob", "one", "ts", 1.0, defer=True)
    s.save_link("bob", 1, 0, 0, None)
    s.remember_peer("bob", "bob", "127.0.0.1", 1, 2, 1.0)
    s.commit()
    # the next turn: new rows, changed rows, deleted rows; then the process dies before its commit
    s.add_outbox("bob", 2, "b", "two", "ts", 2.0, 3.0)
    s.add_message("out", "MESSAGE", "b", "bob", "me", "me", "bob", "two", "ts", 2.0, defer=True)
    s.add_message("in", "MESSAGE", "c", "bob", "bob", "bob", "me", "three", "ts", 2.0)
    s.save_link("bob", 2, 1, 0, None)
    s.count_attempt("bob", 1, 2)
    assert s.expire(50.0) == [("bob", 2, "b")]
    s.add_broadcast(1, "d", "four", "ts", 2.0)
    s.set_meta("read_upto", "3")
    s.remember_peer("bob", "robert", None, 3, 4, 2.0)
    s.prune(10**6, max_age_s=1.0, max_messages=10)
    assert s.history() == [] and s.outbox(("pending", "delivered", "expired")) == []
    s = store_kit.restart(s)
    assert [(r["id"], r["status"], r["attempts"]) for r in s.outbox(("pending", "delivered", "expired"))] == [("a", "pending", 0)]
    assert [(m["n"], m["text"], m["peer_name"]) for m in s.history()] == [(1, "one", "bob")]
    assert s.last_cursor == 1 and s.links()["bob"]["out_seq"] == 1 and s.newest_broadcast() is None
    assert s.get_meta("read_upto") is None and s.get_meta("next_n") is None
    assert [(k["name"], k["addr"]) for k in s.known_peers()] == [("bob", "127.0.0.1")]


def test_prune_takes_only_what_is_older_than_the_cutoff(store_kit):  # noqa: F811
    s = store_kit.open()
    for seq, created in ((1, 10.0), (2, 20.0), (3, 20.0)):  # 1 delivered, 2 delivered, 3 expired
        s.add_outbox("bob", seq, f"o{seq}", "x", "ts", created, 20.0 if seq == 3 else 10**9)
        s.add_message("out", "MESSAGE", f"o{seq}", "bob", "me", "me", "bob", "x", "ts", created)
        s.add_broadcast(seq, f"b{seq}", "x", "ts", created)
    s.save_link("bob", 3, 2, 0, None)
    assert s.expire(20.0) == [("bob", 3, "o3")]
    assert s.prune(now=25.0, max_age_s=5.0, max_messages=100) == 3  # cutoff 20.0: one of each kind
    assert [r["seq"] for r in s.outbox(("pending", "delivered", "expired"))] == [2, 3]
    assert [m["id"] for m in s.history()] == ["o2", "o3"] and s.oldest_broadcast() == 2


def test_deferred_rows_are_read_back_before_the_commit(store_kit):  # noqa: F811
    s = store_kit.open()
    s.add_outbox("bob", 1, "a", "one", "ts", 1.0, 100.0)
    n = s.add_message("in", "MESSAGE", "x", "bob", "bob", "bob", "me", "hi", "ts", 1.0, defer=True, dedupe=True)
    s.add_broadcast(1, "b", "all", "ts", 1.0)
    assert s.pending_after("bob", 0, 10) == [(1, "a", "one", "ts", None)] and s.outbox_ids("bob", ["a", "z"]) == {"a"}
    assert [m["n"] for m in s.messages_after(0)] == [n] and s.broadcast_range(1, 1, 10) == [(1, "b", "all", "ts")]
    assert s.add_message("in", "MESSAGE", "x", "bob", "bob", "bob", "me", "hi", "ts", 2.0) == 0  # unique by id: dedupe


# ---------------------------------------------------------------------------- both answer alike


class Calls:
    """Random calls of the kind the core makes, each valid (the caller's side of the contract:
    fresh ids, growing seqs, time that only grows), as (method name, args, kwargs); `apply`
    makes one on a store."""

    PEERS = ("bob", "carol", "dave")
    NAMES = ("bob", "carol", "x")  # two peers may share a name
    GROUPS = (None, None, "rust-dev", "~" + "0f" * 16)  # mostly plain messages; an open and a private group

    def __init__(self, rng: random.Random):
        self.r = rng
        self.t = 1000.0
        self.next_seq = {p: 1 for p in self.PEERS}
        self.next_bseq = 1
        self.ids = 0
        self.msg_keys: list[tuple] = []  # (id, sender, peer) of messages made, to repeat some
        self.outbox_ids = {p: [] for p in self.PEERS}

    def fresh(self) -> str:
        self.ids += 1
        return f"id{self.ids}"

    def call(self):
        """(method name, args, kwargs) of one random call."""
        r, t, peer = self.r, self.t, self.r.choice(self.PEERS)
        self.t += r.choice((0.0, 0.5, 3.0, 40.0))
        k = r.randrange(24)
        if k <= 2:
            seq = self.next_seq[peer]
            self.next_seq[peer] += 1
            msg_id = self.fresh()
            self.outbox_ids[peer].append(msg_id)
            return "add_outbox", (peer, seq, msg_id, f"to {peer}", "ts", t, t + r.choice((5.0, 60.0, 10**6)), r.choice(self.GROUPS)), {}
        if k == 3:  # a burst: more than one expire() batch of rows
            return "burst", (peer, r.randrange(100, 400), r.random() < 0.5), {}
        if k <= 5:
            out_seq = self.next_seq[peer] - 1
            return "save_link", (peer, out_seq, r.randint(0, out_seq), r.randrange(5), r.choice((None, 0, 7)),
                                 r.choice((None, "e1", "e2")), r.choice((None, "e1"))), {}
        if k == 6:
            return "pending_after", (peer, r.randrange(-1, self.next_seq[peer] + 1), r.choice((0, 1, 5, 1000))), {}
        if k == 7:
            upto = r.randrange(self.next_seq[peer] + 2)
            after = r.randrange(upto + 1)
            return r.choice(("mark_delivered", "count_pending")), (peer, upto, after) if r.random() < 0.5 else (peer, after, upto), {}
        if k == 8:
            lo = r.randrange(1, self.next_seq[peer] + 1)
            return "count_attempt", (peer, lo, lo + r.randrange(4)), {}
        if k == 9:
            pending = None if r.random() < 0.5 else [(p, r.randrange(3)) for p in r.sample(self.PEERS, 2)]
            return "expire", (t,), {"pending": pending}
        if k == 10:
            statuses = tuple(s for s in ("pending", "delivered", "expired") if r.random() < 0.6)
            links = None if r.random() < 0.5 else [(p, self.next_seq[p] - 1, r.randrange(3)) for p in self.PEERS]
            return "outbox", (statuses, r.choice((1, 3, 1000)), links), {}
        if k == 11:
            ids = r.sample(self.outbox_ids[peer], min(3, len(self.outbox_ids[peer]))) + ["nope"]
            return r.choice((("outbox_ids", (peer, ids), {}), ("outbox_statuses", (peer, ids), {}),
                             ("expired_after", (peer, r.randrange(-1, self.next_seq[peer] + 1)), {})))
        if k <= 14:
            if self.msg_keys and r.random() < 0.5:
                msg_id, sender, peer_id = r.choice(self.msg_keys)  # the same message again
            else:
                msg_id, sender, peer_id = self.fresh(), r.choice(("me", peer)), r.choice((peer, peer, None))
                self.msg_keys.append((msg_id, sender, peer_id))
            defer = r.random() < 0.5
            return "add_message", (r.choice(("in", "out")), r.choice(("MESSAGE", "BROADCAST")), msg_id, peer_id, sender, "nm",
                                   None, "text", "ts", t), {"defer": defer, "dedupe": defer and r.random() < 0.3,
                                                            "group": r.choice(self.GROUPS)}
        if k == 15:
            cursor, group = r.randrange(-1, self.ids + 2), r.choice(self.GROUPS)
            msg_id, sender, _ = r.choice(self.msg_keys) if self.msg_keys else ("nope", "me", None)
            return r.choice((("messages_after", (cursor, r.choice(("in", "out")), r.choice((0, 2, 10_000)), group), {}),
                             ("count_after", (cursor, r.choice(("in", "out")), r.choice((None, cursor + 3)), group), {}),
                             ("broadcast_ids_since", (peer, t - r.choice((0.0, 50.0, 10**6))), {}),
                             ("own_shouts_since", (group or "rust-dev", t - r.choice((0.0, 50.0, 10**6)), r.choice((0, 2, 1000))), {}),
                             ("has_message", (msg_id, r.choice((sender, "nobody"))), {})))
        if k == 16:
            return "history", (), {"peer_id": r.choice((None, peer)), "since": r.choice((None, t - 100.0, 0.0)),
                                   "limit": r.choice((0, 1, 4)), "direction": r.choice((None, "in", "out")),
                                   "after": r.choice((None, r.randrange(self.ids + 1))), "group": r.choice(self.GROUPS)}
        if k == 17:
            seq = self.next_bseq
            self.next_bseq += 1
            return "add_broadcast", (seq, self.fresh(), "all", "ts", t), {}
        if k == 18:
            lo = r.randrange(self.next_bseq + 1)
            return r.choice((("broadcast_range", (lo, lo + r.randrange(5), r.choice((0, 2, 1000))), {}),
                             ("first_broadcast_since", (t - r.choice((0.0, 50.0, 10**6)),), {}),
                             ("newest_broadcast", (), {}), ("oldest_broadcast", (), {}), ("last_cursor", (), {}),
                             ("links", (), {}), ("known_peers", (), {}), ("epoch", (), {})))
        if k == 19:
            key = r.choice(("read_upto", "bcast_seq", "next_n", "owner"))
            return r.choice((("get_meta", (key,), {}), ("set_meta", (key if key != "next_n" else "read_upto", str(r.randrange(9))), {})))
        if k == 20:
            return "remember_peer", (peer, r.choice(self.NAMES), r.choice((None, "10.0.0.1")), 1, 2, t), {}
        if k == 21:
            return "prune", (t, r.choice((0.0, 3.0, 40.0, 60.0, 10**6)), r.choice((2, 20, 10**6))), {"budget": r.choice((1, 3, 100_000))}
        if k == 22:
            return r.choice((("commit", (), {}), ("restart", (), {}), ("new_epoch", (), {}),
                             ("bind_owner", (r.choice(("me", "me2")),), {})))
        return "commit", (), {}


def apply(store, name, args, kwargs):
    if name == "outbox_statuses":
        peer, ids = args
        return [store.outbox_status(peer, i) for i in ids]
    if name in ("last_cursor", "epoch"):
        return getattr(store, name)
    return getattr(store, name)(*args, **kwargs)


def test_the_memory_store_answers_as_sqlite_does(tmp_path):
    """Row for row, in the same order, through commits and kill -9 restarts."""
    seen = Counter()
    for seed in range(6):
        compare(tmp_path / f"{seed}.db", seed, seen)
    # The calls found things to answer: rows expired (more than a batch of 256 at once), pruned,
    # refused as duplicates, lost in a crash, found by group; not only empty lists.
    assert seen["expire"] > 5 and seen["expire>256"] and seen["prune"] > 5 and seen["duplicate"] > 5 and seen["lost"] > 5
    assert seen["by group"] > 5 and seen["shouts"] and seen["has"]
    assert seen["answers"] > 800


def unsynced(store: Store) -> Store:
    """No fsync: a kill -9 loses nothing committed without it (only a power cut would), and the
    test then does not wait on a disk that five engineers share."""
    store.db.execute("PRAGMA synchronous=OFF")
    return store


def compare(path: Path, seed: int, seen: Counter) -> None:
    rng = random.Random(seed)
    sql_random = random.Random(seed).randbytes  # the same draws for both, and on after a restart
    sql = unsynced(Store(path, randbytes=sql_random))
    mem = MemoryStore(random.Random(seed).randbytes)
    calls = Calls(rng)
    for step in range(500):
        name, args, kwargs = calls.call()
        if name == "restart":
            before = mem.last_cursor, len(mem.history()), mem.outbox(("pending", "delivered", "expired"))
            sql.db.close()
            sql = unsynced(Store(path, randbytes=sql_random))
            mem.crash()
            seen["lost"] += (mem.last_cursor, len(mem.history()), mem.outbox(("pending", "delivered", "expired"))) != before
            continue
        if name == "burst":
            peer, count, same_expiry = args
            for _ in range(count):
                seq = calls.next_seq[peer]
                calls.next_seq[peer] += 1
                msg_id = calls.fresh()
                calls.outbox_ids[peer].append(msg_id)
                expires = calls.t + (1.0 if same_expiry else rng.choice((1.0, 10**6)))
                for s in (sql, mem):
                    s.add_outbox(peer, seq, msg_id, "x", "ts", calls.t, expires)
            continue
        want, got = apply(sql, name, args, kwargs), apply(mem, name, args, kwargs)
        assert got == want, f"seed {seed} step {step}: {name}{args}{kwargs}"
        assert mem.epoch == sql.epoch and mem.last_cursor == sql.last_cursor
        seen["answers"] += bool(want) and name not in ("commit", "epoch", "last_cursor", "links", "known_peers")
        seen["expire"] += name == "expire" and bool(want)
        seen["expire>256"] += name == "expire" and len(want) > 256
        seen["prune"] += name == "prune" and want > 0
        seen["duplicate"] += name == "add_message" and want == 0
        seen["by group"] += name in ("history", "messages_after") and any(m["group"] for m in want)
        seen["shouts"] += name == "own_shouts_since" and bool(want)
        seen["has"] += name == "has_message" and want
    sql.close()


class SqliteInTheSim(Store):
    """The SQLite store, built where the simulator builds its `MemoryStore`."""

    def __init__(self, randbytes):
        super().__init__(":memory:", randbytes=randbytes)

    def crash(self) -> None:
        """The simulator crashes a node between two turns: nothing is left uncommitted to lose."""
        assert not self._in_tx and not (self._outbox_rows or self._message_rows or self._broadcast_rows)


def test_the_simulated_nodes_get_the_same_answers_from_both_stores(monkeypatch):
    """A simulation's digest hashes every frame on the wire: the same digest on SQLite means that
    no node decided anything differently on the in-memory store, through crashes and restarts."""
    from p2pd import sim
    from test_sim import FAST

    on_memory = sim.run_scenario(8, 5, seed=7, scenario="crash", settings=FAST)
    monkeypatch.setattr(sim, "MemoryStore", SqliteInTheSim)
    on_sqlite = sim.run_scenario(8, 5, seed=7, scenario="crash", settings=FAST)
    assert on_memory["exactly_once"] and on_memory["lost_messages"] > 0  # the crashes lost frames in flight
    assert on_sqlite["digest"] == on_memory["digest"]
    assert isinstance(sim.Sim(1, 1).nodes[0].store, SqliteInTheSim)  # the second run was on SQLite
