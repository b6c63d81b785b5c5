"""Routed direct messages (p2pd/relay.py): hop by hop along a chain a-b-c-d, sealed end to end."""

from __future__ import annotations

import time
from collections import Counter

import pytest
from nacl.bindings import crypto_box_keypair

from p2pd import protocol as P
from p2pd import sealed
from p2pd.actions import Send, SendBatch
from p2pd.drops import Drops
from p2pd.records import z85_encode
from p2pd.relay import Relay
from p2pd.seeded import SplitMix64
from p2pd.trust import node_id_for
from testmsg import make

NOW = 1_780_000_000.0
TEXT = "the treasure is under the third oak"
# Long enough that random ciphertext cannot contain it by chance (a 3-byte marker did, 1 run in hundreds).
EPOCH = "epoch-of-the-sealed-test"
NAMES = ("alice", "bob", "carol", "dave", "erin")


def keypair() -> tuple[str, str]:
    public, secret = crypto_box_keypair()
    return z85_encode(secret), z85_encode(public)


KEYPAIRS = [keypair() for _ in NAMES]
IDS = [node_id_for(pub) for _, pub in KEYPAIRS]
A, B, C, D, E = IDS
KEYS = {node_id_for(pub): pub for _, pub in KEYPAIRS}


def chain_hop(order: list, me: str):
    """next_hop on a line of nodes: the neighbour on the destination's side, None off the line."""
    i = order.index(me)

    def next_hop(dest: str):
        if dest not in order or dest == me:
            return None
        return order[i + 1] if order.index(dest) > i else order[i - 1]
    return next_hop


class Net:
    """Relays for the first ``n`` nodes on a chain (E, when built, is off it: no route to it)."""

    def __init__(self, n: int = 4, keyed: bool = True, key_of=KEYS.get, **kw):
        order = IDS[:4]
        self.relays = {}
        for i, (name, (sec, pub)) in enumerate(zip(NAMES[:n], KEYPAIRS[:n])):
            nid = IDS[i]
            hop = chain_hop(order, nid) if nid in order else (lambda dest: None)
            self.relays[nid] = Relay(nid, name, sec if keyed else None, pub if keyed else None, hop, key_of,
                                     Counter(), Drops(), SplitMix64(i + 1), **kw)
        self.wire: list[bytes] = []  # every ROUTED envelope as sent

    def __getitem__(self, nid: str) -> Relay:
        return self.relays[nid]

    def carry(self, send, sender: str, tamper=None, hops: int = 10):
        """Pass ``send`` along (through the codec, as the wire would) until someone keeps it.
        ``tamper(msg, at)`` may rewrite the envelope as it leaves node ``at``.  Returns
        (node that kept it, inner or None)."""
        at = sender
        for _ in range(hops):
            msg = send.msg
            if tamper is not None:
                msg = tamper(msg, at) or msg
            raw = P.encode(msg)
            self.wire.append(raw)
            msg = P.decode(raw)
            acts, inner = self[send.key].on_routed(NOW, msg, at)
            if not acts:
                return send.key, inner
            assert len(acts) == 1 and isinstance(acts[0], Send)
            at, send = send.key, acts[0]
        raise AssertionError("still travelling")

    def drops(self, nid: str) -> Counter:
        return +self[nid]._drops.counts


def message(to: str = D, sender: str = A, text: str = TEXT, **kw) -> P.Message:
    return make(P.MESSAGE, sender, NAMES[IDS.index(sender)], NOW, {"text": text, "seq": 1, "base": 1, "epoch": EPOCH},
                target_id=to, **kw)


def retarget(**fields):
    """A tamper function that rewrites body fields (and, with ``target``, the envelope's target)."""
    def tamper(msg, at):
        if at != B:
            return None
        target = fields.pop("target", msg.target_id) if "target" in fields else msg.target_id
        return P.Message(msg.type, msg.id, msg.sender_id, msg.sender_name, msg.timestamp, {**msg.data, **fields}, target)
    return tamper


# --- delivery ----------------------------------------------------------------------------------

def test_a_message_travels_the_chain_sealed_and_arrives_once_as_it_was():
    net = Net()
    msg = message()
    send = net[A].wrap(D, msg)
    assert send.key == B and send.msg.type == P.ROUTED and send.msg.target_id == D
    assert send.msg.sender_id == A and send.msg.timestamp == msg.timestamp and send.msg.id != msg.id
    assert send.msg.id[:12] == msg.id[:12]  # same millisecond, fresh random part
    kept_by, inner = net.carry(send, A)
    assert kept_by == D and inner.to_dict() == msg.to_dict()
    assert [net[n].stats for n in IDS[:4]] == [Counter(routed_out=1), Counter(routed_relayed=1),
                                              Counter(routed_relayed=1), Counter(routed_in=1)]
    assert not any(net.drops(n) for n in IDS[:4])
    ttls = [P.decode(raw).data["ttl"] for raw in net.wire]
    assert ttls == [sealed.DEFAULT_TTL, sealed.DEFAULT_TTL - 1, sealed.DEFAULT_TTL - 2]
    senders = [P.decode(raw).sender_id for raw in net.wire]
    assert senders == [A, B, C]  # each hop sends its own envelope


def test_relays_cannot_read_what_they_carry():
    net = Net()
    net.carry(net[A].wrap(D, message()), A)
    assert len(net.wire) == 3
    for raw in net.wire:
        assert TEXT.encode() not in raw and b"treasure" not in raw and EPOCH.encode() not in raw


def test_every_routable_type_arrives_and_others_are_refused():
    net = Net()
    routable = [make(P.ACK, A, "alice", NOW, {"upto": 3}, target_id=D),
                make(P.FETCH, A, "alice", NOW, {"from": 1, "to": 4}, target_id=D),
                make(P.VIEW, A, "alice", NOW, {"kind": "SHUFFLE", "nodes": []}, target_id=D),
                make(P.BROADCAST, A, "alice", NOW, {"text": "replayed", "bseq": 2}, target_id=D)]
    for msg in routable:
        assert net.carry(net[A].wrap(D, msg), A)[1].to_dict() == msg.to_dict()
    link_only = [make(P.PING, A, "alice", NOW, {}), make(P.LEAVE, A, "alice", NOW, {}),
                 make(P.JOIN, A, "alice", NOW, {"addr": "127.0.0.1", "port": 5000, "pub_port": 5001})]
    for msg in link_only:
        assert net.carry(net[A].wrap(D, msg), A) == (D, None)
    assert net.drops(D) == Counter(bad_type=3)
    assert net[D].stats["routed_in"] == 4


def test_wrap_many_batches_to_the_hop():
    net = Net()
    msgs = [message(text=f"m{i}") for i in range(3)]
    (batch,) = net[A].wrap_many(D, msgs)
    assert isinstance(batch, SendBatch) and batch.key == B and len(batch.msgs) == 3
    got = [net.carry(Send(B, env), A)[1] for env in batch.msgs]
    assert [m.to_dict() for m in got] == [m.to_dict() for m in msgs]
    (one,) = net[A].wrap_many(D, msgs[:1])
    assert isinstance(one, Send)
    assert net[A].wrap_many(E, msgs) == [] and net[A].stats["routed_unreachable"] == 3


def test_wrap_many_splits_batches_at_the_batch_limit():
    """A routed FETCH reply can be 1,000 broadcasts: no batch may exceed what a link takes
    (P.MAX_BATCH envelopes), or the hop drops it whole as bad_frames (found by
    tests/test_tree_daemons.py: fetches of 300 missed broadcasts never arrived)."""
    net = Net()
    msgs = [message(text=f"m{i}") for i in range(P.MAX_BATCH + 44)]
    batches = net[A].wrap_many(D, msgs)
    assert [len(b.msgs) for b in batches] == [P.MAX_BATCH, 44] and all(b.key == B for b in batches)


# --- tampering ---------------------------------------------------------------------------------

@pytest.mark.parametrize("tamper, kept_by, kind", [
    (retarget(**{"from": E}), D, "sealed_bad_box"),  # claims another origin: its key does not open the box
    (retarget(**{"from": C}), C, "routing_loop"),  # claims to come from the next relay: it will not pass its own on
    (retarget(to=C, target=C), C, "sealed_bad_box"),  # misdirected to another node: not sealed to it
    (retarget(to=E, target=E), None, "no_route"),  # misdirected off the map
    (retarget(to=C), C, "misrouted"),  # the body's destination is not the envelope's
    (retarget(ttl=0), C, "ttl_expired"),
    (retarget(nonce="AAAA"), D, "sealed_malformed"),
    (retarget(sv=2), C, "sealed_malformed"),
    (retarget(extra=1), C, "sealed_malformed"),
])
def test_tampering_relays_are_caught(tamper, kept_by, kind):
    net = Net()
    where, inner = net.carry(net[A].wrap(D, message()), A, tamper)
    assert inner is None
    assert where == (kept_by or C)
    assert net.drops(where) == Counter({kind: 1})


def test_a_message_reflected_to_its_origin_is_refused():
    """Swapped from/to: the pair key is the same both ways, so the box opens; the binding refuses it."""
    net = Net()
    env = net[A].wrap(D, message()).msg
    back = P.Message(P.ROUTED, env.id, B, "bob", env.timestamp, {**env.data, "from": D, "to": A}, A)
    assert net[A].on_routed(NOW, back, B) == ([], None)
    assert net.drops(A) == Counter(sealed_bad_binding=1)


def test_a_body_replayed_to_another_node_does_not_open_there():
    net = Net()
    env = net[A].wrap(D, message()).msg
    elsewhere = P.Message(P.ROUTED, env.id, B, "bob", env.timestamp, {**env.data, "to": C}, C)
    assert net[C].on_routed(NOW, elsewhere, B) == ([], None)
    assert net.drops(C) == Counter(sealed_bad_box=1)


def test_an_altered_box_does_not_open():
    def flip(msg, at):
        if at == C:
            box = msg.data["box"]
            box = ("B" if box[0] != "B" else "C") + box[1:]  # still canonical base64
            return P.Message(msg.type, msg.id, msg.sender_id, msg.sender_name, msg.timestamp, {**msg.data, "box": box},
                             msg.target_id)
    net = Net()
    assert net.carry(net[A].wrap(D, message()), A, flip) == (D, None)
    assert net.drops(D) == Counter(sealed_bad_box=1)


def test_a_ttl_raised_by_a_relay_changes_only_how_far_it_goes():
    net = Net()
    assert net.carry(net[A].wrap(D, message()), A, retarget(ttl=64))[1].to_dict()["data"]["text"] == TEXT


def test_an_origin_cannot_write_in_anothers_name():
    net = Net()
    forged = message(sender=C)  # sealed by A, inside it claims to be from C
    assert net.carry(net[A].wrap(D, forged), A) == (D, None)
    assert net.drops(D) == Counter(spoofed=1)


def test_an_inner_message_for_another_node_is_refused():
    net = Net()
    assert net.carry(net[A].wrap(D, message(to=C)), A) == (D, None)
    assert net.drops(D) == Counter(misrouted=1)


def test_unknown_and_wrong_keys():
    net = Net()
    net[D]._key_of = {B: KEYS[B]}.get  # D has not heard of A's key
    assert net.carry(net[A].wrap(D, message()), A) == (D, None)
    net[D]._key_of = lambda nid: KEYS[B]  # holds a key for A that is not A's
    assert net.carry(net[A].wrap(D, message()), A) == (D, None)
    assert net.drops(D) == Counter(sealed_unknown_sender=1, sealed_key_mismatch=1)
    net[A]._key_of = lambda nid: KEYS[C]  # A would seal to a key that is not D's
    assert net[A].wrap(D, message()) is None
    net[A]._key_of = {}.get
    assert net[A].wrap(D, message()) is None
    assert net[A].stats == Counter(routed_out=2, routed_unreachable=2)


# --- routing -----------------------------------------------------------------------------------

def test_ttl_expires():
    net = Net(ttl=1)
    assert net.carry(net[A].wrap(D, message()), A) == (C, None)  # a->b (1), b->c (0): c may not pass it on
    assert net.drops(C) == Counter(ttl_expired=1)


def test_no_route():
    net = Net(n=5)
    assert net[A].wrap(E, message(to=E)) is None and net[A].stats == Counter(routed_unreachable=1)
    net[C]._next_hop = lambda dest: None  # C lost its routes since B chose it
    assert net.carry(net[A].wrap(D, message()), A) == (C, None)
    assert net.drops(C) == Counter(no_route=1)


def test_never_back_to_the_hop_it_came_from_nor_around_to_its_origin():
    net = Net()
    net[B]._next_hop = lambda dest: A  # B's table says D is behind A
    assert net.carry(net[A].wrap(D, message()), A) == (B, None)
    assert net.drops(B) == Counter(routing_loop=1)
    net = Net()
    send = net[A].wrap(D, message())
    acts, inner = net[A].on_routed(NOW, send.msg, B)  # our own message, come back
    assert (acts, inner) == ([], None) and net.drops(A) == Counter(routing_loop=1)


def test_only_routed_envelopes_are_taken():
    net = Net()
    assert net[B].on_routed(NOW, message(), A) == ([], None)
    assert net.drops(B) == Counter(bad_type=1)


# --- plain mode --------------------------------------------------------------------------------

def test_plain_mode_round_trip():
    net = Net(keyed=False, key_of=lambda nid: None)
    msg = message()
    send = net[A].wrap(D, msg)
    assert send.msg.data["sv"] == 0 and send.msg.data["msg"] == msg.to_dict()
    assert net.carry(send, A)[1].to_dict() == msg.to_dict()
    assert net[C].stats == Counter(routed_relayed=1) and net[D].stats == Counter(routed_in=1)
    forged = net[A].wrap(D, message(sender=C))
    assert net.carry(forged, A) == (D, None) and net.drops(D) == Counter(spoofed=1)


def test_keyed_and_keyless_refuse_each_others_bodies():
    plain, keyed = Net(keyed=False), Net()
    assert keyed.carry(plain[A].wrap(D, message()), A) == (B, None)
    assert keyed.drops(B) == Counter(sealed_plain_refused=1)
    assert plain.carry(keyed[A].wrap(D, message()), A) == (B, None)
    assert plain.drops(B) == Counter(sealed_no_key=1)


def test_an_invalid_inner_envelope_is_refused():
    net = Net(keyed=False)
    send = net[A].wrap(D, message())
    bad = {**send.msg.data, "msg": {**send.msg.data["msg"], "data": {"text": 7}}}
    env = P.Message(P.ROUTED, send.msg.id, A, "alice", send.msg.timestamp, bad, D)
    assert net.carry(Send(B, env), A) == (D, None) and net.drops(D) == Counter(sealed_bad_inner=1)


# --- sizes and keys ----------------------------------------------------------------------------

def test_oversized():
    for keyed in (True, False):
        net = Net(keyed=keyed, max_frame=4096)
        assert net[A].wrap(D, message(text="x" * 3000)) is None
        assert net[A].stats == Counter(routed_too_large=1)
        assert net[A].wrap(D, message(text="x" * 1000)) is not None


def test_a_relay_refuses_keys_not_its_own():
    sec, pub = KEYPAIRS[0]
    with pytest.raises(ValueError):
        Relay(B, "bob", sec, pub, lambda d: None, KEYS.get, Counter(), Drops(), SplitMix64(1))
    with pytest.raises(ValueError):
        Relay(A, "alice", sec, KEYPAIRS[1][1], lambda d: None, KEYS.get, Counter(), Drops(), SplitMix64(1))


def test_cost(capsys):
    """Wrap at A + open at D of a short MESSAGE, pair keys cached (printed; run with -s)."""
    net, msg, n = Net(), message(), 300
    a, d = net[A], net[D]
    envs = [a.wrap(D, msg).msg for _ in range(3)]
    d.on_routed(NOW, P.Message(P.ROUTED, envs[0].id, C, "carol", envs[0].timestamp, envs[0].data, D), C)  # warm
    t0 = time.perf_counter()
    envs = [a.wrap(D, msg).msg for _ in range(n)]
    t1 = time.perf_counter()
    for env in envs:
        assert d.on_routed(NOW, env, C)[1] is not None
    t2 = time.perf_counter()
    relay_msgs = [net[B].on_routed(NOW, env, A)[0][0].msg for env in envs]
    t3 = time.perf_counter()
    wrap_us, open_us, relay_us = ((t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6, (t3 - t2) / n * 1e6)
    with capsys.disabled():
        print(f"\nrelay: wrap {wrap_us:.1f} us, open+decode {open_us:.1f} us, relay one hop {relay_us:.1f} us per short MESSAGE")
    assert len(relay_msgs) == n and wrap_us + open_us < 1000
