"""The node's keys as the overlay uses them: signing its record, accusing, checking others'.

A daemon always has a CURVE keypair (even with ``--insecure``, which only turns off CURVE on
the sockets), and its node id is the hash of the public key, so `Keys` signs records and
seals routed messages with it (records.py, sealed.py).  `NoKeys` is for nodes built without
keys, with ids that are no key's hash: the unit tests' ``alice-id`` and the simulator, where
checking ten thousand signatures per node would measure libsodium, not the protocol.  Its
records carry no signature and it believes any well-shaped record: never a daemon's choice
(daemon.py always builds `Keys`), and a node with `Keys` refuses what `NoKeys` makes.
"""

from __future__ import annotations

from dataclasses import replace

from .records import (ACCUSATIONS, ALIVE, SELF_STATUSES, Accusation, BadRecord, Fact, NodeRecord, Signer, accuse, decode, sign,
                      verify)


class Keys:
    """A node's CURVE keypair (Z85 text) and the signer derived from it."""

    signed = True

    def __init__(self, secret_z85: str, public_z85: str, intern=None):
        self.secret = secret_z85
        self.public = public_z85
        self.signer = Signer.from_curve_secret(secret_z85)
        if self.signer.curve_key != public_z85:
            raise ValueError("the CURVE secret and public keys do not belong together")
        self.node_id = self.signer.node_id
        self._bound: set = set()  # key bindings already checked (records.verify)
        # The daemon passes sys.intern: one string per node id in the process, not one per
        # record naming it (200 records list up to 16 ids each): about 0.2 MiB of 30 at 200 nodes.
        self._intern = intern

    def record(self, name: str, addresses, incarnation: int, status: str = ALIVE, pub_port: int = 0, links=(),
               bseq: int = 0, boldest: int = 0, bepoch: str = "", groups=()) -> NodeRecord:
        return sign(self.signer, name, addresses, incarnation, status, pub_port, links, bseq, boldest, bepoch, groups)

    def accuse(self, node_id: str, incarnation: int, status: str) -> Accusation:
        return accuse(self.signer, node_id, incarnation, status)

    def sign(self, data: bytes) -> bytes:
        return self.signer.sign(data)

    def verify(self, fact: Fact) -> None:
        verify(fact, self._bound)

    def decode(self, obj) -> Fact:
        fact = decode(obj)
        intern = self._intern
        if intern is not None and type(fact) is NodeRecord:  # its ids are checked: all str
            return replace(fact, node_id=intern(fact.node_id), links=tuple(map(intern, fact.links)))
        return fact


_NO_KEY = "0" * 40  # a well-formed Z85 key that is nobody's: keyless records name none
_NO_VK = bytes(32)


class NoKeys:
    """Unsigned records for a node without keys (tests, the simulator); see the module doc."""

    signed = False
    secret = None
    public = None

    def __init__(self, node_id: str):
        self.node_id = node_id

    def record(self, name: str, addresses, incarnation: int, status: str = ALIVE, pub_port: int = 0, links=(),
               bseq: int = 0, boldest: int = 0, bepoch: str = "", groups=()) -> NodeRecord:
        return NodeRecord(self.node_id, name, _NO_KEY, _NO_VK, tuple(addresses), incarnation, status, b"", pub_port, tuple(links),
                          bseq, boldest, bepoch, tuple(groups))

    def accuse(self, node_id: str, incarnation: int, status: str) -> Accusation:
        return Accusation(self.node_id, _NO_KEY, _NO_VK, node_id, incarnation, status, b"")

    def sign(self, data: bytes) -> None:
        return None

    @staticmethod
    def verify(fact: Fact) -> None:
        if not isinstance(fact, (NodeRecord, Accusation)):
            raise BadRecord("malformed", "not a record")

    @staticmethod
    def decode(obj) -> Fact:
        """The shape of a record or accusation, without the checks a keyed id would pass."""
        if type(obj) is not dict:
            raise BadRecord("malformed", "not an object")
        status = obj.get("status")
        if type(status) is not str or status not in (ACCUSATIONS if "by" in obj else SELF_STATUSES) or not (type(obj.get("inc")) is int and obj["inc"] >= 0):
            raise BadRecord("malformed", "status or incarnation")  # precedence (records.newer) reads both before anything else
        try:
            if "by" in obj:
                return Accusation(str(obj["by"]), _NO_KEY, _NO_VK, str(obj["id"]), int(obj["inc"]), str(obj["status"]), b"")
            addrs = tuple(a for a in obj["addrs"] if type(a) is str)[:8]
            links = tuple(n for n in obj["links"] if type(n) is str)[:16]
            return NodeRecord(str(obj["id"]), str(obj["name"]), _NO_KEY, _NO_VK, addrs, int(obj["inc"]), str(obj["status"]),
                              b"", int(obj["pub"]), links, int(obj["bseq"]), int(obj["boldest"]), str(obj["bepoch"]),
                              tuple(g for g in obj.get("groups", ()) if type(g) is str)[:32])
        except (KeyError, TypeError, ValueError):
            raise BadRecord("malformed", "fields") from None
