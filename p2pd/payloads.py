"""The ``data`` of each message type, as types: what a handler may read and what it may assume.

How this works
--------------
The codec (protocol.py `decode`) checks every field below before a handler sees the
message; these `TypedDict`s say what it guarantees, one per message type, so a handler
reads ``msg.data`` as its type's payload (``data: JoinData = msg.data``) and a type
checker and the reader know which fields are required (present whenever the codec passed
the message), which optional, and their types.  They are the same dicts the codec
returns: typing them costs nothing on the hot path.  `PAYLOADS` maps each type to its
payload; tests/test_payloads.py checks it against the codec (a required field missing is
rejected; what p2pd sends carries only declared fields, of the declared types) and against
docs/PROTOCOL.md.

A peer may send fields not listed (a newer version's): they are ignored, never trusted.
"""

from typing import Required, TypedDict

from . import protocol as P


class Beacon(TypedDict, total=False):
    """Broadcast numbers a JOIN, PING and PONG carry (messaging.py `beacon`)."""
    bseq: int  # the sender's latest broadcast number
    boldest: int  # the oldest it can still replay
    epoch: str  # its store's epoch: the numbering these belong to


class JoinData(Beacon, total=False):
    addr: str | None  # where it listens; None or absent: "use the address you see"
    port: Required[int]
    pub_port: Required[int]
    reply_to: str | None  # the JOIN this one answers
    key: str | None  # its CURVE public key (secure mode)
    batch: bool  # it takes several envelopes per ZeroMQ message
    digest: bool  # on link-up it sends what it holds as FACTS "have", asks ("want") for what ours shows it lacks, and answers our asks
    rid_suffix: bool  # it takes routing ids "<id>/<suffix>"
    again: bool  # it had lost us: our link to it may be broken
    boot: str  # this run of the node
    got: int  # how far it received our direct numbering ...
    got_epoch: str  # ... in this epoch of ours
    bgot: int  # how far it received our broadcasts ...
    bgot_epoch: str  # ... in this epoch of ours


class PeerEntry(TypedDict, total=False):
    id: Required[str]
    name: Required[str]
    addr: str | None
    port: Required[int]
    pub_port: Required[int]
    key: str | None


class PeersData(TypedDict):
    peers: list[PeerEntry]


class MessageData(TypedDict, total=False):
    text: Required[str]
    seq: int  # its number on this sender -> receiver link (with base), absent from simple peers
    base: int  # the oldest seq the sender still needs
    epoch: str  # the sender's store epoch: the numbering seq belongs to
    group: str  # a shout: its group (an open group's name, or "~" + a private group's id)
    invite: bool  # text is a private group's key for us (groupkeys.invite_payload, as JSON)


class BroadcastData(TypedDict, total=False):
    text: Required[str]
    bseq: int  # its number among the origin's broadcasts
    epoch: str
    replay: bool  # sent again in answer to FETCH since


class PingData(Beacon, total=False):
    pass


class PongData(Beacon, total=False):
    ping_id: Required[str]  # the PING this answers


class AckData(TypedDict, total=False):
    upto: Required[int]  # every message up to here is stored
    gap: bool  # and one after it was dropped out of order: go back now


# Either a range of broadcast numbers (from, to), or everything since a UNIX time; "from" is a
# Python keyword, hence the functional form.
# With "group": the group's shouts the receiver sent since then (join --since); "tag" and "inc"
# prove a private group's key (groupkeys.member_tag of the asker at that incarnation).
FetchData = TypedDict("FetchData", {"since": float, "from": int, "to": int, "group": str, "tag": str, "inc": int}, total=False)


class LeaveData(TypedDict):
    pass


class ViewData(TypedDict, total=False):
    """A HyParView message (views.py); the fields besides ``kind`` depend on it (docs/PROTOCOL.md, VIEW, and 12.2)."""
    kind: Required[str]
    new: str  # FORWARD_JOIN: the joiner
    ttl: int  # FORWARD_JOIN, SHUFFLE: hops left on the walk
    high: bool  # NEIGHBOR: we have no active peer left
    accepted: bool  # NEIGHBOR_REPLY
    origin: str  # SHUFFLE: who started it
    nodes: list  # SHUFFLE, SHUFFLE_REPLY: node ids
    records: list  # the signed records of the nodes named (and of the asker in NEIGHBOR and JOIN): where to reach them


class TreeData(TypedDict, total=False):
    """A Plumtree message (tree.py); the fields besides ``kind`` depend on it (docs/PROTOCOL.md, TREE, and 12.6)."""
    kind: Required[str]
    bcast: str  # GOSSIP: the origin's BROADCAST envelope, as the origin encoded it
    sig: str  # GOSSIP: the origin's signature of it, hex
    round: int  # GOSSIP: hops from the origin
    ids: list  # IHAVE: [[msg id, round], ...]
    id: str  # GRAFT: the broadcast asked for


# A sealed body on its way (sealed.py): the outer fields; "from" is a keyword, hence the functional form.
RoutedData = TypedDict("RoutedData", {"from": Required[str], "to": Required[str], "ttl": Required[int], "sv": int,
                                      "nonce": str, "box": str, "msg": dict}, total=False)


class FactsData(TypedDict, total=False):
    facts: Required[list]  # signed records and accusations (records.py encode)
    have: list  # on link-up, to a peer whose JOIN said "digest": [node id, incarnation, rank] of all we hold
    want: list  # node ids whose records (and what outranks them) the sender asks for, after the receiver's "have"


class ShoutData(TypedDict, total=False):
    """A shout on its way to its group's members (shouts.py; docs/PROTOCOL.md, SHOUT)."""
    g: Required[str]  # the group: an open group's name, or "~" + a private group's id
    o: str  # the origin's node id
    mid: str  # the shout's message id
    ts: str  # its timestamp
    ep: str  # the origin's store epoch (the members' seq numbering)
    n: int  # the origin's count of its shouts in this group (bound into a private shout's seal)
    body: str  # the text; a private group's: sealed with the group key (groupkeys.seal_shout)
    to: dict  # member id -> [seq, base] on the origin -> member link (delivery.py)
    sig: str | None  # the origin's signature of all of the above, hex (None: a keyless node's, tests and the simulator)
    fwd: Required[list]  # the members this copy is to reach (split again by each relay)
    ttl: Required[int]  # hops left


PAYLOADS: dict[str, type] = {
    P.VIEW: ViewData,
    P.TREE: TreeData,
    P.ROUTED: RoutedData,
    P.FACTS: FactsData,
    P.SHOUT: ShoutData,
    P.JOIN: JoinData,
    P.LEAVE: LeaveData,
    P.MESSAGE: MessageData,
    P.BROADCAST: BroadcastData,
    P.PEERS: PeersData,
    P.PING: PingData,
    P.PONG: PongData,
    P.ACK: AckData,
    P.FETCH: FetchData,
}
