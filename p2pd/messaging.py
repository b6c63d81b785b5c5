"""Messages on top of links: durable direct sends, numbered broadcasts, ACK and FETCH.

How this works
--------------
The node hands this module every MESSAGE, BROADCAST, ACK and FETCH it
receives, each control request to send, and a call to `tick` and `flush`.
Bookkeeping (sequence numbers, windows, gaps) lives in `delivery.py`; this
module turns its answers into envelopes and effects:

* ``send``: number the message, store it in the outbox and the history, and
  transmit what the window allows.  The reply to the client says
  ``delivered`` once the peer's ACK covers it, or ``queued`` when the wait
  ends first (``require``: an error instead).
* incoming MESSAGE: store new ones, drop duplicates and gaps; owe an ACK.
* ``on_join``: a peer's JOIN says how far it received our numbering; beyond
  our own counters, our store went back in time (a restored backup), and we
  start a new store epoch so that the peers resynchronise.
* ``flush``: called by the event loop after a batch; it writes counters, and
  returns the ACKs owed.  The loop commits the store *before* it performs
  anything `flush` or the handlers returned, so an ACK, reply or event
  always describes data already on disk.

Pure apart from the store: no sockets; time is passed in.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from . import protocol as P
from .actions import Publish, PublishBatch, ToClient
from .delivery import Delivery
from .drops import Drops
from .errors import ErrorCode
from .links import Links
from .membership import ALIVE, Membership
from .names import Names
from .outbound import Outbound
from .payloads import AckData, BroadcastData, FetchData, MessageData
from .replies import err, ok
from .storage import Storage
from .watchers import Watchers

log = logging.getLogger("p2pd.messaging")

INVITE = "+invite"  # an outbox row's group when it is an invitation (shouts.py): no group's name starts with "+"

EXPIRE_EVERY_S = 1.0
CLOCK_SLACK_S = 300.0  # how far another node's clock may be ahead of ours, for `connect --since`
PRUNE_EVERY_S = 60.0
# A stored shout's type is P.SHOUT (shouts.py: a MESSAGE with a group, as the frame that carries it is named).
_COUNTER = {P.MESSAGE: "messages_in", P.BROADCAST: "broadcasts_in", P.SHOUT: "shouts_in"}  # info's counters
EVENTS = {P.MESSAGE: "message", P.BROADCAST: "broadcast", P.SHOUT: "shout"}  # a stored message's watch event


@dataclass
class Waiter:
    client: bytes
    req: object
    deadline: float
    require: bool
    peer_name: str
    peer_id: str


def entry(msg_id: str, type_: str, sender_id: str, sender_name: str, timestamp: str, text: str, target_id: str | None,
          sender_label: str | None = None, cursor: int = 0, group: str | None = None) -> dict:
    """A message as `inbox` and `watch` show it.  ``sender_name`` is the name bound to the sender's
    key at JOIN (`Node.sender`), never the message's own claim; ``sender_label`` adds a short id
    when another node has that name too.  ``cursor``: its row number in the store, which only
    grows: a watcher that comes back asks for what came after the last one it saw (`watch
    since`), and `read` marks everything up to one as read.  ``group``: a shout's group, as shown."""
    return {"id": msg_id, "type": type_, "sender_id": sender_id, "sender_name": sender_name,
            "sender_label": sender_label or sender_name, "timestamp": timestamp, "text": text, "target_id": target_id,
            "cursor": cursor, "group": group}


class Messaging:
    """Owns the outbox waiters, the broadcast replay bookkeeping and the read mark; the numbering
    is its `delivery`'s.  Given what it needs and no more: envelopes (`Outbound`), the table
    (is a peer alive, does it take batches), the links (is one open for an ACK), the
    watchers, the names to show, and where to report bad input."""

    def __init__(self, store: Storage, settings, outbound: Outbound, table: Membership, links: Links, watchers: Watchers,
                 names: Names, drops: Drops, stats: Counter, publish=None, reach=None, groups=None):
        self.out = outbound
        # How our broadcasts go out: the broadcast tree's (tree.Tree.originate), else on PUB to all.
        self._publish = publish
        # Can a direct message reach this peer now (linked and alive, or through the overlay)?
        self._reach = reach if reach is not None else self._linked_alive
        # The node's groups (shouts.Groups, `attach_groups`): is a shout's group ours, how is it
        # shown, and what an invitation does.  Without (unit tests of this module), no group is ours.
        self._groups = groups
        self.table = table
        self.links = links
        self.watchers = watchers
        self.names = names
        self.drop = drops
        self.stats = stats
        self.store = store
        self._unread: int | None = None  # received messages after the read mark; None: count when asked (unread_count)
        self.settings = settings
        self.delivery = Delivery(store, settings.send_window, settings.ack_timeout_s, settings.message_expiry_s)
        self.waiters: dict[str, Waiter] = {}
        self.since_wanted: dict[str, float] = {}
        self.replay_seen: dict[str, tuple[set, int]] = {}  # origin -> (ids delivered live, bseq the replay must pass)
        # After our store was found to have gone back in time (on_join): the epoch we left, and
        # each peer's out_seq then.  Until a restart, a JOIN that reports the old numbering still
        # acknowledges what it covers.
        self.left_epoch: tuple[str, dict[str, int]] | None = None
        self._next_expire = 0.0
        self._next_prune = 0.0

    def attach_groups(self, groups) -> None:
        """The node's groups (shouts.Groups), built after us since shouts go out through us."""
        self._groups = groups

    # ------------------------------------------------------------------ helpers
    def _linked_alive(self, peer_id: str) -> bool:
        peer = self.table.get(peer_id)
        return peer is not None and peer.state == ALIVE
    def beacon(self) -> dict:
        """Fields for JOIN and PING: our latest broadcast number, the oldest we can replay, our store's epoch."""
        oldest, latest = self.delivery.broadcast_window()
        return {"bseq": latest, "boldest": oldest, "epoch": self.store.epoch}

    def received(self, peer_id: str | None) -> dict:
        """Fields for a JOIN to ``peer_id``: how far we have received its messages and broadcasts,
        each with the epoch that numbering belongs to (only where we know it)."""
        ls = self.delivery.links.get(peer_id) if peer_id is not None else None
        if ls is None:
            return {}
        data = {}
        if ls.in_epoch is not None:
            data["got"], data["got_epoch"] = ls.in_seq, ls.in_epoch
        if ls.bcast_epoch is not None and ls.bcast_seq is not None:
            data["bgot"], data["bgot_epoch"] = ls.bcast_seq, ls.bcast_epoch
        return data

    def on_join(self, now: float, peer, data: dict) -> list:
        """A JOIN told us how far ``peer`` has received our numbering (`received` on its side).
        Called before anything is sent to the peer in answer to that JOIN.

        Beyond our own counters, in our current epoch, means that our store went back in time
        (restored from an older backup, or its last commits lost to a power loss): the numbers we
        would give out next are ones the peers have seen, and they would drop those messages as
        duplicates.  So start a new epoch: every peer then resynchronises as with a new store.
        What the peer received of the numbering we left acknowledges our outbox up to there
        (those messages reached it after the backup was taken): they are not sent again."""
        epoch, delivery = self.store.epoch, self.delivery
        ls = delivery.links.get(peer.id)
        out_seq = ls.out_seq if ls is not None else 0
        got, bgot = data.get("got"), data.get("bgot")
        behind = None
        if got is not None and data.get("got_epoch") == epoch and got > out_seq:
            behind = f"seq {got} > {out_seq}"
        elif bgot is not None and data.get("bgot_epoch") == epoch and bgot > delivery.bcast_seq:
            behind = f"broadcast {bgot} > {delivery.bcast_seq}"
        if behind is not None:
            log.warning("the store is older than what peer %s has received from us (%s): it was restored from a backup? "
                        "starting a new store epoch so peers resynchronise", peer.name, behind)
            self.stats["store_rollbacks_detected"] += 1
            self.left_epoch = (epoch, {peer_id: link.out_seq for peer_id, link in delivery.links.items()})
            self.store.new_epoch()
        if got is not None and self.left_epoch is not None and data.get("got_epoch") == self.left_epoch[0]:
            return self._acked(now, peer.id, min(got, self.left_epoch[1].get(peer.id, 0)))
        return []

    def _reply(self, w: Waiter, status: str, msg_id: str) -> ToClient:
        return ToClient(w.client, ok(w.req, {"id": msg_id, "peer": w.peer_name, "peer_id": w.peer_id, "status": status}))

    def _store_in(self, now: float, msg: P.Message, peer, defer: bool = False) -> int:
        """Store a received message under the name bound to the sender's key at JOIN (``peer.name``):
        the envelope's ``sender_name`` is only the sender's claim, and is not kept."""
        return self.store.add_message("in", msg.type, msg.id, msg.sender_id, msg.sender_id, peer.name, msg.target_id,
                                      msg.data["text"], msg.timestamp, self.out.epoch(now), defer=defer)

    def _delivered_in(self, now: float, cursor: int, msg_id: str, type_: str, sender_id: str, sender_name: str, timestamp: str, text: str,
                      target_id, group: str | None = None) -> list:
        self.stats[_COUNTER[type_]] += 1
        if self._unread is not None:
            self._unread += 1
        if not self.watchers:
            return []
        name, label = self.names.sender(sender_id, sender_name)
        e = entry(msg_id, type_, sender_id, name, timestamp, text, target_id, label, cursor, group)
        return self.watchers.emit(now, EVENTS[type_], message=e)

    # ------------------------------------------------------------------ sending
    def send(self, now: float, peer_id: str, peer_name: str, texts: list[str], client: bytes, req, wait_s: float, require: bool,
             given_ids: list[str] | None = None) -> list:
        """Store and send.  ``given_ids`` make a send idempotent: a client that
        is not sure its request got through (the daemon died before replying)
        sends again with the same ids, and what is stored already is skipped."""
        epoch = self.out.epoch(now)
        ids = []
        prior = None  # status of a message this request repeats (single sends only matter)
        timestamp = P.utc_timestamp(epoch)
        stored = 0
        repeated = self.store.outbox_ids(peer_id, given_ids) if given_ids is not None else set()
        for i, text in enumerate(texts):
            if given_ids is not None:
                msg_id = given_ids[i]
                if msg_id in repeated:
                    prior = self.store.outbox_status(peer_id, msg_id)
                    ids.append(msg_id)
                    continue
                repeated.add(msg_id)  # the same id twice in one request is stored once
            else:
                msg_id = self.out.new_id(epoch)
            self.delivery.enqueue(peer_id, msg_id, text, timestamp, epoch)
            self.store.add_message("out", P.MESSAGE, msg_id, peer_id, self.out.id, self.out.name, peer_id, text, timestamp, epoch, defer=True)
            ids.append(msg_id)
            stored += 1
        self.stats["messages_out"] += stored
        alive = self._reach(peer_id)
        acts = self.pump(now, peer_id) if alive else []
        if len(ids) > 1:
            return acts + [ToClient(client, ok(req, {"ids": ids, "peer": peer_name, "peer_id": peer_id, "status": "queued"}))]
        w = Waiter(client, req, now + wait_s, require, peer_name, peer_id)
        if prior == "delivered":  # a retry of a message already acknowledged: no ACK will come again
            return acts + [self._reply(w, "delivered", ids[0])]
        if wait_s > 0 and (alive or require):
            self.waiters[ids[0]] = w
            return acts
        return acts + [self._reply(w, "queued", ids[0])]

    def pump(self, now: float, peer_id: str) -> list:
        """Transmit what the window allows to a linked peer."""
        base, rows = self.delivery.due(peer_id, now)
        if not rows:
            return []
        epoch = self.store.epoch
        msgs = []
        for seq, msg_id, text, timestamp, group in rows:
            data = {"text": text, "seq": seq, "base": base, "epoch": epoch}
            if group == INVITE:
                data["invite"] = True  # the text is a private group's key (shouts.py); never a group's name
            elif group is not None:
                data["group"] = group
                self.stats["shout_unicasts"] += 1  # a shout sent on its own (resent, or its SHOUT could not carry it)
            msgs.append(P.Message(P.MESSAGE, msg_id, self.out.id, self.out.name, timestamp, data, peer_id))
        return self.out.send_many(peer_id, msgs)

    def broadcast(self, now: float, texts: list[str]) -> tuple[list, list[str]]:
        """Number, store and publish broadcasts; returns (effects, their ids)."""
        epoch = self.out.epoch(now)
        timestamp = P.utc_timestamp(epoch)
        msgs, ids = [], []
        for text in texts:
            msg_id = self.out.new_id(epoch)
            bseq = self.delivery.next_broadcast(msg_id, text, timestamp, epoch)
            msgs.append(P.Message(P.BROADCAST, msg_id, self.out.id, self.out.name, timestamp, {"text": text, "bseq": bseq, "epoch": self.store.epoch}, None))
            self.store.add_message("out", P.BROADCAST, msg_id, None, self.out.id, self.out.name, None, text, timestamp, epoch, defer=True)
            ids.append(msg_id)
        self.stats["broadcasts_out"] += len(texts)
        if self._publish is not None:
            acts = self._publish(now, msgs)  # the broadcast tree's; None: publish plain (we are linked to everyone)
            if acts is not None:
                # Simple peers (leaves) read no TREE envelope: our own broadcasts go to them plain,
                # on their own topics (docs/PROTOCOL.md 11), as every SUB gets them in a star.
                leaves = tuple(p.id for p in self.table.leaves())
                if leaves:
                    acts += [Publish(m, to=leaves) for m in msgs]
                return acts, ids
        # One PUB reaches every subscriber alike: batch only if every peer that may be subscribed takes batches.
        if len(msgs) > 1 and all(p.batch for p in self.table.all() if p.subscribed or p.state == ALIVE):
            return [PublishBatch(msgs[k:k + P.MAX_BATCH]) for k in range(0, len(msgs), P.MAX_BATCH)], ids
        return [Publish(m) for m in msgs], ids

    # ------------------------------------------------------------------ receiving
    def on_message(self, now: float, msg: P.Message, peer) -> list:
        data: MessageData = msg.data
        seq = data.get("seq")
        if seq is None:  # a simple peer without sequence numbers: dedupe by id only
            n = self._store_in(now, msg, peer)
            return self._delivered_in(now, n, msg.id, msg.type, msg.sender_id, peer.name, msg.timestamp, data["text"], msg.target_id) if n else []
        verdict = self.delivery.accept(peer.id, seq, data["base"], data.get("epoch"))
        if verdict == "dup":
            self.stats["duplicates_dropped"] += 1
            return []
        if verdict == "gap":
            self.stats["out_of_order_dropped"] += 1
            return []
        if "group" in data or "invite" in data:
            return self._group_message(now, msg, peer)
        n = self._store_in(now, msg, peer, defer=True)  # new by its sequence number
        return self._delivered_in(now, n, msg.id, msg.type, msg.sender_id, peer.name, msg.timestamp, data["text"], msg.target_id)

    def _group_message(self, now: float, msg: P.Message, peer) -> list:
        """A numbered MESSAGE, new, that is a shout or an invitation (shouts.py).  A shout is stored
        only if we are in its group (a node that left still takes it: its number is spent, the
        sender's outbox is settled by the ACK); once per id, since ``join --since`` may replay one."""
        data: MessageData = msg.data
        groups = self._groups
        if data.get("invite") is True:
            return groups.on_invite(now, peer, data["text"]) if groups is not None else []
        wire = data["group"]
        if groups is None or not groups.member_of(wire):
            self.stats["shouts_not_member"] += 1
            return []
        n = self.store.add_message("in", P.SHOUT, msg.id, msg.sender_id, msg.sender_id, peer.name, msg.target_id, data["text"],
                                   msg.timestamp, self.out.epoch(now), dedupe=True, group=wire)
        if not n:
            self.stats["duplicates_dropped"] += 1
            return []
        return self._delivered_in(now, n, msg.id, P.SHOUT, msg.sender_id, peer.name, msg.timestamp, data["text"], msg.target_id,
                                  groups.label(wire))

    def on_broadcast(self, now: float, msg: P.Message, peer) -> list:
        data: BroadcastData = msg.data
        bseq = data.get("bseq")
        if bseq is None:
            n = self._store_in(now, msg, peer)
            return self._delivered_in(now, n, msg.id, msg.type, msg.sender_id, peer.name, msg.timestamp, data["text"], None) if n else []
        if data.get("replay") and peer.id in self.since_wanted:
            since_epoch = self.since_wanted.pop(peer.id)
            ls = self.delivery.link(peer.id)
            if ls.bcast_seq is None or bseq <= ls.bcast_seq:
                # The backlog is numbered from below what was delivered live since first contact:
                # those come again, and only their ids tell them apart.  Remember the ids stored
                # from this origin since then, until the replay has passed where we were.
                seen = self.store.broadcast_ids_since(peer.id, since_epoch - CLOCK_SLACK_S)
                self.replay_seen[peer.id] = (seen, ls.bcast_seq or 0)
                self.delivery.since(peer.id, bseq)
        fields = (msg.id, msg.sender_id, peer.name, msg.timestamp, data["text"])  # the JOIN-bound name, not the claim
        ready, want, dup = self.delivery.on_broadcast(peer.id, bseq, fields, now, self.settings.ack_timeout_s, data.get("epoch"))
        if dup:
            self.stats["duplicates_dropped"] += 1
        acts = self._fetch(now, peer, want) if want else []
        replay = self.replay_seen.get(peer.id)
        for msg_id, sender_id, sender_name, timestamp, text in ready:
            if replay is not None and msg_id in replay[0]:
                self.stats["duplicates_dropped"] += 1  # delivered live before the backlog was asked for
                continue
            # New by its number: queued for the turn's batched insert, outside the id index.
            n = self.store.add_message("in", P.BROADCAST, msg_id, sender_id, sender_id, sender_name, None, text, timestamp,
                                       self.out.epoch(now), defer=True)
            acts += self._delivered_in(now, n, msg_id, P.BROADCAST, sender_id, sender_name, timestamp, text, None)
        if replay is not None and self.delivery.link(peer.id).bcast_seq >= replay[1]:
            del self.replay_seen[peer.id]  # the replay has caught up with what was delivered live
        return acts

    def _fetch(self, now: float, peer, rng: tuple[int, int]) -> list:
        self.stats["broadcast_fetches"] += 1
        log.debug("fetching broadcasts %d..%d from %s", rng[0], rng[1], peer.name)
        return [self.out.send(peer.id, self.out.msg(now, P.FETCH, {"from": rng[0], "to": rng[1]}, target=peer.id))]

    def announced(self, now: float, peer, data: dict, patience_s: float = 0.0) -> list:
        """JOIN, PING or PONG told us the peer's broadcast numbers: fetch any we missed.

        ``patience_s``: a heartbeat can overtake broadcasts still on their way through the
        PUB, so a shortfall it shows is fetched only if it is still there that much later."""
        return self.announced_by(now, peer.id, data, lambda: peer, patience_s)

    def announced_by(self, now: float, origin: str, data: dict, peer_of, patience_s: float = 0.0) -> list:
        """As `announced`, for an origin given by id (a signed record gave its numbers): its
        `Peer`, ``peer_of()``, is asked for only when there is something to fetch, since an
        unlinked origin's is made for the purpose (overlay.py `remote_peer`, about 0.5 KB each:
        one per member, in every daemon, when it was made for every record)."""
        latest, oldest = data.get("bseq"), data.get("boldest")
        if latest is None:
            return []
        want = self.delivery.announced(origin, latest, oldest if oldest is not None else 1, now, self.settings.ack_timeout_s,
                                       data.get("epoch"), patience_s)
        peer = peer_of() if want else None
        return self._fetch(now, peer, want) if peer is not None else []

    def on_ack(self, now: float, msg: P.Message, peer) -> list:
        data: AckData = msg.data
        if msg.target_id != self.out.id:
            self.drop(now, "misrouted", "ACK for another node", peer.name)
            return []
        return self._acked(now, peer.id, data["upto"], data.get("gap") is True) + self.pump(now, peer.id)

    def _acked(self, now: float, peer_id: str, upto: int, gap: bool = False) -> list:
        """``peer_id`` has stored our messages up to ``upto``: settle them and answer their waiters."""
        delivered = self.delivery.on_ack(peer_id, upto, now, self.out.epoch(now), want_ids=bool(self.waiters), gap=gap)
        acts = []
        for msg_id in delivered[1]:
            w = self.waiters.pop(msg_id, None)
            if w is not None:
                acts.append(self._reply(w, "delivered", msg_id))
        self.stats["messages_delivered"] += delivered[0]
        return acts

    def on_fetch(self, now: float, msg: P.Message, peer) -> list:
        data: FetchData = msg.data
        if msg.target_id != self.out.id:
            self.drop(now, "misrouted", "FETCH for another node", peer.name)
            return []
        since = data.get("since")
        oldest, latest = self.delivery.broadcast_window()
        if since is not None:
            first = self.store.first_broadcast_since(since)
            if first is None:
                return []
            lo, hi, replay = first, latest, True
        else:
            lo, hi, replay = max(data["from"], oldest), min(data["to"], latest), False
        msgs = []
        for seq, msg_id, text, timestamp in self.delivery.replay(lo, hi) if lo <= hi else []:
            data = {"text": text, "bseq": seq, "epoch": self.store.epoch}
            if replay:
                data["replay"] = True
            msgs.append(P.Message(P.BROADCAST, msg_id, self.out.id, self.out.name, timestamp, data, peer.id))
        self.stats["broadcasts_replayed"] += len(msgs)
        return self.out.send_many(peer.id, msgs)

    def request_since(self, now: float, peer, since_epoch: float) -> list:
        self.since_wanted[peer.id] = since_epoch
        return [self.out.send(peer.id, self.out.msg(now, P.FETCH, {"since": since_epoch}, target=peer.id))]

    def link_up(self, now: float, peer) -> list:
        self.delivery.rewind(peer.id)
        return self.pump(now, peer.id)

    # ------------------------------------------------------------------ timers
    def busy(self) -> bool:
        """Work that `tick` must look at often (resends, a client awaiting delivery): the loop
        then ticks every few tens of milliseconds; when idle it sleeps until the next timer."""
        return bool(self.waiters) or any(self._reach(p) for p in self.delivery.pending_peers())

    def tick(self, now: float) -> list:
        acts: list = []
        for peer_id in self.delivery.pending_peers():
            if self._reach(peer_id):
                acts += self.pump(now, peer_id)
        for msg_id, w in list(self.waiters.items()):
            if now >= w.deadline:
                del self.waiters[msg_id]
                if w.require:
                    acts.append(ToClient(w.client, err(w.req, ErrorCode.TIMEOUT, f"not delivered to {w.peer_name} in time; it stays queued and is retried until it expires (see: p2pctl outbox)")))
                else:
                    acts.append(self._reply(w, "queued", msg_id))
        if now >= self._next_expire:
            self._next_expire = now + EXPIRE_EVERY_S
            pending = [(peer_id, self.delivery.links[peer_id].out_acked) for peer_id in self.delivery.pending_peers()]
            for peer_id, seq, msg_id in self.store.expire(self.out.epoch(now), pending):
                self.delivery.forget_fresh(peer_id)
                self.stats["messages_expired"] += 1
                log.warning("message %s to %s expired undelivered", msg_id[:12], peer_id[:12])
                acts += self.watchers.emit(now, "expired", message={"id": msg_id, "peer_id": peer_id, "seq": seq})
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            pruned = self.store.prune(self.out.epoch(now), self.settings.retention_s, self.settings.max_stored_messages)
            if pruned:
                self._unread = None  # unread rows may have gone: counted again when next asked
            self.delivery.pruned()
            if pruned:
                log.info("pruned %d old rows from the store", pruned)
        return acts

    def flush(self, now: float, unpaid=None) -> list:
        """After a batch: save counters and return the ACKs owed (the loop commits first).
        ``unpaid(peer_id)``: how many of its frames a peer has had on credit (intake.py)."""
        self.delivery.save()
        acts = []
        for peer_id, upto, gap in self.delivery.acks_owed(unpaid=unpaid):
            if peer_id in self.links or self._reach(peer_id):
                data = {"upto": upto, "gap": True} if gap else {"upto": upto}
                acts.append(self.out.send(peer_id, self.out.msg(now, P.ACK, data, target=peer_id)))
        return acts

    # ------------------------------------------------------------------ queries
    def outbox(self, statuses: tuple[str, ...], limit: int) -> list[dict]:
        links = [(peer_id, ls.out_seq, ls.out_acked) for peer_id, ls in self.delivery.links.items() if ls.out_seq > 0]
        rows = self.names.label_rows(self.store.outbox(statuses, limit, links), peer_key="peer")
        for row in rows:
            if row.get("group") == INVITE:
                row["text"], row["group"] = "(an invitation to a private group)", None  # its text is the group's key
            elif self._groups is not None:
                row["group"] = self._groups.label(row.get("group"))
        return rows

    def inbox(self, limit: int, unread: bool = False, group: str | None = None) -> list[dict]:
        """The newest ``limit`` received messages, oldest first; ``unread``: only those after the read
        mark; ``group``: only that group's shouts."""
        rows = self.store.history(direction="in", limit=limit, after=self.read_upto() if unread else None, group=group)
        return self.entries(rows)

    def entries(self, rows: list[dict]) -> list[dict]:
        out = []
        for r in rows:
            name, label = self.names.sender(r["sender_id"], r["sender_name"])
            group = self._groups.label(r.get("group")) if self._groups is not None else r.get("group")
            out.append(entry(r["id"], r["type"], r["sender_id"], name, r["timestamp"], r["text"], r["target_id"], label, r["n"], group))
        return out

    # ------------------------------------------------------------------ read marks
    def read_upto(self) -> int:
        """The cursor up to which received messages have been read (in the chat, or `p2pctl read`)."""
        return int(self.store.get_meta("read_upto", "0"))

    def mark_read(self, upto: int) -> int:
        """Move the read mark forward to ``upto`` (never back, never past the newest message)."""
        old = self.read_upto()
        mark = max(old, min(upto, self.store.last_cursor))
        if mark != old:
            self.store.set_meta("read_upto", str(mark))
            if self._unread is not None:
                self._unread -= self.store.count_after(old, upto=mark)  # only the rows just read
        return mark

    def unread_count(self) -> int:
        """Received messages after the read mark.  Counted in the store once, then kept up to date
        here: `status` and `info` are polled, and a count over a large unread history is a scan."""
        if self._unread is None:
            self._unread = self.store.count_after(self.read_upto())
        return self._unread

    def pending_count(self) -> int:
        # An expired message is never acknowledged, yet it no longer waits in the outbox.
        return sum(ls.out_seq - ls.out_acked - self.store.expired_after(peer_id, ls.out_acked)
                   for peer_id, ls in self.delivery.links.items() if ls.out_seq > ls.out_acked)
