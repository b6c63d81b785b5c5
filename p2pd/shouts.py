"""Groups at this node: the ones it is in, their keys, who else is in them, and shouts (issue 16).

How this works
--------------
**Membership.**  The groups this node is in, the private groups' keys and the counts of its
shouts are kept in the store's meta (``groups``, JSON), and listed in our signed record
(records.py): an open group by name, a private one as ``~<group id>:<member tag>``
(groupkeys.py), which only holders of the key can recognise; the tag is keyed by the record's
incarnation, so no node can copy it into its own record.  Every record the overlay takes
updates the `groups.Directory` of who is in which group (open groups by name, private ones as
``~<group id>``: a group's *wire* name, as it travels in frames and sits in the store); the
joins and leaves it implies become ``group`` events for the watchers of the groups we are in.
A member that is down (crashed, stopped, cut off: dead or left in the roster) stays a member,
so shouts wait for it in the outbox as direct messages do; only a member down for longer than
the outbox keeps a message (``message_expiry_s``, 7 days) is dropped from the groups (`tick`).
The members of our groups are saved too (within 2 s of a change, `tick`), so a node that
restarts addresses its first shouts to them before the network has sent it any record
(`_seed`).

**A shout is a direct message to every other member**, numbered on each origin -> member link
and kept in the outbox like any other (delivery.py).  So each member stores it exactly once,
in order per sender, also when it was offline or cut off: the outbox resends until the member
acknowledges it, as for ``send``.  Only the first transmission differs: not one envelope per
member, m times the path length in copies, but one SHOUT frame that carries the text once,
every member's ``[seq, base]`` and the origin's signature over all of it, and follows the
routes: `groups.split_by_tree` gives each first hop its share of the members (``fwd``), and
each relay splits its share again (`on_shout`).  A member takes its part as the MESSAGE it
stands for (``deliver``: messaging.py checks that it is in the group; a node that left
acknowledges without storing).  A member whose link has earlier messages still to send gets
the shout with them, as a MESSAGE with a ``group`` field (`Delivery.claim`); so do resends,
sealed end to end when routed.

**Private groups.**  The SHOUT's body is sealed with the group key (`groupkeys.seal_shout`), so
relays see ciphertext; a resent MESSAGE carries the text inside the end-to-end seal.  An
invitation is the key in a direct MESSAGE with ``invite: true`` (never stored as a message);
the invited node joins with ``join GROUP --private``.  Only ``--private`` joins a private
group, so an invitation cannot turn a later ``join GROUP`` of an open group into a join of
someone's private one.  Any node may invite: a pending invitation is what ``join GROUP
--private`` joins instead of making a new group, so the inviter is kept and shown (``groups``,
the join's reply: ``invited_by``), and ``leave`` undoes a join the user did not mean.

**join --since** asks every member (FETCH ``{"group", "since"}``, with a member tag for a
private group) for the shouts it sent since then; each answers with new outbox entries, and
the store keeps a shout once per id.

Pure: the store, the routes, the signing and the random bytes are given; time is passed in.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from typing import Callable

import orjson

from . import protocol as P
from .drops import Drops
from .messaging import INVITE
from .errors import ErrorCode
from .groupkeys import (GroupKey, GroupKeyError, accept_invite, group_id, invite_payload, is_member_tag, member_tag,
                        new_group_key, open_shout, seal_shout)
from .groups import (JOIN, MAX_GROUPS, OK, Directory, ShoutOut, check_group_name, normalize_group, split_by_tree,
                     valid_group_key)
from .records import MAX_GROUP_BYTES, BadRecord, _check_sig

log = logging.getLogger("p2pd.shouts")

SIG_DOMAIN = b"p2pd-shout-v1\x00"  # what a SHOUT's signature covers: this, then `signed_bytes`
MAX_TO = 1024  # members one SHOUT frame addresses (a larger group: the rest by the outbox, one by one)
SHOUT_TTL = 16  # hops a SHOUT may still travel
FETCH_MAX = 1000  # shouts replayed for one ``join --since``
SWEEP_S = 60.0  # how often members down too long are looked for (`Groups.tick`)
MAX_INVITES = 32  # invitations held, not joined (any node may send one: the oldest goes)
MAX_FORMER = 256  # names of private groups left, kept to show their stored shouts
MAX_SAVED_MEMBERS = 1024  # members saved per group we are in (`_seed`)
MEMBERS_SAVE_S = 2.0  # how soon after a change the members of our groups are saved
META = "groups"


class GroupError(ValueError):
    """A group request refused: ``code`` (an ErrorCode) and a one-line error that names the fix."""

    def __init__(self, code: ErrorCode, error: str):
        super().__init__(error)
        self.code = code
        self.error = error


def _str(value: str) -> bytes:
    raw = value.encode("utf-8")
    return struct.pack(">I", len(raw)) + raw


def signed_bytes(d: dict) -> bytes:
    """A SHOUT's canonical bytes (docs/PROTOCOL.md, SHOUT): each string as a 4-byte big-endian
    length and its UTF-8; ``n``, each seq and base as 8 bytes big-endian; the members by id."""
    out = [SIG_DOMAIN, _str(d["g"]), _str(d["o"]), _str(d["mid"]), _str(d["ts"]), _str(d["ep"]),
           struct.pack(">Q", d["n"]), _str(d["body"]), struct.pack(">I", len(d["to"]))]
    for member in sorted(d["to"]):
        seq, base = d["to"][member]
        out += [_str(member), struct.pack(">QQ", seq, base)]
    return b"".join(out)


def _is_seq(v) -> bool:
    return type(v) is int and 1 <= v <= P.MAX_SEQ


def check_shout(d: dict) -> str | None:
    """None if a SHOUT's data is well formed, else what is wrong (its signature is checked apart)."""
    if not valid_group_key(d.get("g")):
        return "g"
    for key in ("o", "mid", "ep"):
        if not (type(d.get(key)) is str and P.valid_node_id(d[key])):
            return key
    if not P.valid_timestamp(d.get("ts")):  # it becomes the stored message's timestamp
        return "ts"
    if not _is_seq(d.get("n")):
        return "n"
    body = d.get("body")
    if not (type(body) is str and len(body) <= 2 * P.MAX_TEXT_LEN):
        return "body"
    to = d.get("to")
    if not (type(to) is dict and 0 < len(to) <= MAX_TO):
        return "to"
    for member, pair in to.items():
        if not (P.valid_node_id(member) and type(pair) is list and len(pair) == 2 and _is_seq(pair[0]) and _is_seq(pair[1])
                and pair[1] <= pair[0]):
            return "to"
    fwd = d.get("fwd")
    if not (type(fwd) is list and 0 < len(fwd) <= len(to) and len(set(fwd)) == len(fwd) and all(type(m) is str and m in to for m in fwd)):
        return "fwd"
    if not (type(d.get("ttl")) is int and 0 <= d["ttl"] <= 64):
        return "ttl"
    if not (d.get("sig") is None or type(d["sig"]) is str and len(d["sig"]) == 128):
        return "sig"
    return None


class Groups:
    """Owns the groups we are in, the keys, the directory of members, and shouts' fan-out."""

    def __init__(self, node_id: str, name: str, store, msgs, out, routes, roster, watchers, stats: Counter, drops: Drops,
                 sign: Callable[[bytes], bytes] | None, verify_key_of: Callable[[str], bytes | None],
                 randbytes: Callable[[int], bytes], reach: Callable[[str], bool], deliver: Callable,
                 resign: Callable[[float], None], incarnation: Callable[[], int], keep_down_s: float = 7 * 86400.0):
        """``msgs``: messaging.Messaging (its delivery numbers and pumps the members' links);
        ``out``: outbound.Outbound; ``routes``: routes.Routes; ``roster``: roster.Roster (records,
        read only); ``reach(node id)``: can a direct message go there now; ``deliver(now, msg)``:
        hand a MESSAGE from its origin to the node, as if it came over a link; ``resign(now)``:
        sign our record again; ``incarnation()``: our record's now; ``keep_down_s``: how long a
        member that is down is still sent shouts (the outbox's expiry)."""
        self.id, self.name = node_id, name
        self.store, self.msgs, self.out, self.routes, self.roster = store, msgs, out, routes, roster
        self.watchers, self.stats, self.drop = watchers, stats, drops
        self.sign, self.verify_key_of, self.randbytes = sign, verify_key_of, randbytes
        self.reach, self.deliver, self.resign, self.incarnation = reach, deliver, resign, incarnation
        self.directory = Directory()
        self.joined: dict[str, str] = {}  # wire name -> shown name (an open group's name, or the private group's)
        self.keys: dict[str, GroupKey] = {}  # private group id -> key (joined, or invited to)
        self.inviters: dict[str, dict] = {}  # private group id -> {"id", "name"} of who invited us (shown: anyone may invite)
        self.former: dict[str, str] = {}  # private groups left -> their names: stored shouts are still shown and found by name
        self.counts = ShoutOut()  # our shouts per group (bound into a private shout's seal)
        # A member that is down stays a member: shouts wait for it in the outbox, as direct messages
        # do, until it is back or they expire.  It is forgotten once down that long (`tick`).
        self.keep_down_s = keep_down_s
        self._down: dict[str, float] = {}  # members not alive -> since when (as we saw it)
        self._next_sweep = 0.0
        self._members_dirty = False  # the members of a group we are in changed since the last save
        self._save_members_at = 0.0
        self._load()

    # ------------------------------------------------------------------ state
    def _load(self) -> None:
        raw = self.store.get_meta(META)
        if not raw:
            return
        try:
            state = orjson.loads(raw)
            for gid, enc in state.get("keys", {}).items():
                gk = GroupKey.decode(enc)
                if group_id(gk) == gid:
                    self.keys[gid] = gk
            for wire in state.get("joined", []):
                shown = self.shown(wire)
                if shown is not None and valid_group_key(wire):
                    self.joined[wire] = shown
            self.counts = ShoutOut.from_dict(state.get("counts", {}))
            self.inviters = {gid: by for gid, by in state.get("by", {}).items() if gid in self.keys and isinstance(by, dict)}
            self.former = {gid: n for gid, n in state.get("former", {}).items() if check_group_name(n) is None}
            self._seed(state.get("members", {}))
        except (orjson.JSONDecodeError, GroupKeyError, AttributeError, TypeError, ValueError) as e:
            log.error("the groups saved in the store cannot be read (%s): starting in no group", type(e).__name__)

    def _members_changed(self, now: float) -> None:
        """Save the members of our groups soon (a few changes at once: one write)."""
        if not self._members_dirty:
            self._members_dirty = True
            self._save_members_at = now + MEMBERS_SAVE_S

    def _seed(self, members: dict) -> None:
        """The members of our groups as last saved: a restarted node addresses its shouts (and its
        ``join --since``) to them before the network has told it anything.  Each goes in at
        version 0, so the node's own record, when it comes, replaces the guess."""
        lists: dict[str, list[str]] = {}
        for wire, ids in members.items():
            if wire in self.joined and isinstance(ids, list):
                for node_id in ids[:MAX_SAVED_MEMBERS]:
                    if P.valid_node_id(node_id) and node_id != self.id:
                        lists.setdefault(node_id, []).append(wire)
        for node_id, wires in lists.items():
            self.directory.update(node_id, 0, wires)

    def _save(self) -> None:
        self._members_dirty = False
        self.store.set_meta(META, orjson.dumps({"joined": sorted(self.joined), "counts": self.counts.to_dict(), "by": self.inviters,
                                                "former": self.former,
                                                "members": {w: self.members(w, with_self=False)[:MAX_SAVED_MEMBERS] for w in self.joined},
                                                "keys": {gid: gk.encode() for gid, gk in self.keys.items()}}).decode())

    def shown(self, wire: str) -> str | None:
        """The name people see for a wire name: an open group's own, a private group's from its
        key; None for a private group whose key we do not hold."""
        if wire.startswith("~"):
            gk = self.keys.get(wire[1:])
            return gk.group if gk is not None else None
        return wire

    def label(self, wire: str | None) -> str | None:
        """How a stored row's group is shown: its name (a private group's also after we left
        it), or the id's first characters for one we never knew the name of."""
        if wire is None:
            return None
        shown = self.shown(wire)
        if shown is None and wire.startswith("~"):
            shown = self.former.get(wire[1:])
        return shown if shown is not None else wire[:13]

    def member_of(self, wire: str) -> bool:
        return wire in self.joined

    def wire_of(self, shown: str) -> str | None:
        """The wire name of a group we are in, by the name people see (None if we are in none by it)."""
        for wire, name in self.joined.items():
            if name == shown:
                return wire
        return None

    def find(self, shown: str) -> str:
        """The wire name a filter (``--group``) means: a group we are in, else a private group we
        hold the key of, else the open group of that name."""
        wire = self.wire_of(shown)
        if wire is not None:
            return wire
        for gid, gk in self.keys.items():
            if gk.group == shown:
                return "~" + gid
        for gid, name in reversed(self.former.items()):
            if name == shown:
                return "~" + gid
        return shown

    def record_entries(self, incarnation: int) -> tuple[str, ...]:
        """What our record at ``incarnation`` lists (records.py, groups)."""
        out = sorted(w for w in self.joined if not w.startswith("~"))
        out += sorted(f"{w}:{member_tag(self.keys[w[1:]], self.id, incarnation)}" for w in self.joined if w.startswith("~"))
        return tuple(out)

    # ------------------------------------------------------------------ records in
    def _visible(self, rec) -> list[str]:
        """A record's groups as we can see them: open ones, and the private ones whose key we hold
        and whose tag is right for that node at that incarnation."""
        out = []
        for entry in rec.groups:
            if entry.startswith("~"):
                gid, _, tag = entry[1:].partition(":")
                gk = self.keys.get(gid)
                if gk is not None and is_member_tag(gk, rec.node_id, rec.incarnation, tag):
                    out.append("~" + gid)
            else:
                out.append(entry)
        return out

    def on_record(self, now: float, node_id: str, rec) -> list:
        """A node's live record taken: the groups it is in now."""
        if node_id == self.id:
            return []
        self._down.pop(node_id, None)
        visible = self._visible(rec)
        changes = self.directory.changes(node_id, rec.incarnation, visible)
        verdict = self.directory.update(node_id, rec.incarnation, visible)
        if any(c[0] in self.joined for c in changes):
            self._members_changed(now)
        if verdict not in (OK, "stale"):
            self.drop(now, f"groups_{verdict}", f"group list of {node_id[:12]} not taken: {verdict}", node_id[:12])
        return self._events(now, changes)

    def tick(self, now: float) -> list:
        """Once a minute: forget the members down longer than ``keep_down_s`` (they leave their groups)."""
        if self._members_dirty and now >= self._save_members_at:
            self._save()  # who is in our groups, for a restart (`_seed`)
        if now < self._next_sweep:
            return []
        self._next_sweep = now + SWEEP_S
        acts: list = []
        for node_id in self.directory.nodes():
            if self.roster.state_of(node_id) == "alive":
                self._down.pop(node_id, None)
            elif now - self._down.setdefault(node_id, now) >= self.keep_down_s:
                del self._down[node_id]
                acts += self._events(now, self.directory.remove(node_id))
                self._members_changed(now)
        return acts

    def _rescan(self, now: float) -> list:
        """A key was added or dropped: every record's private entries read again."""
        acts: list = []
        for member in self.roster.members():
            rec = self.roster.record_of(member.node_id)
            if rec is not None and member.node_id != self.id and self.directory.version(member.node_id) is not None:
                visible = self._visible(rec)
                held = set(self.directory.groups_of(member.node_id))
                if set(visible) != held:
                    self.directory.remove(member.node_id)
                    changes = self.directory.changes(member.node_id, rec.incarnation, visible)
                    self.directory.update(member.node_id, rec.incarnation, visible)
                    acts += self._events(now, [c for c in changes if c[0] not in held or c[2] != JOIN])
        return acts

    def _events(self, now: float, changes: list) -> list:
        acts: list = []
        for wire, node_id, kind in changes:
            if wire not in self.joined:
                continue  # only the groups we are in: the others' joins would flood a watcher at start
            rec = self.roster.record_of(node_id)
            peer = {"id": node_id, "name": rec.name if rec is not None else node_id[:12]}
            acts += self.watchers.emit(now, "group", kind=kind, group=self.joined[wire], private=wire.startswith("~"), peer=peer)
        return acts

    # ------------------------------------------------------------------ control requests
    def members(self, wire: str, with_self: bool = True) -> list[str]:
        ids = [m for m in self.directory.members(wire) if m != self.id]
        return sorted(ids + [self.id]) if with_self and wire in self.joined else ids

    def _member_rows(self, wire: str, with_state: bool = False) -> list[dict]:
        rows = []
        for m in self.members(wire):
            rec = self.roster.record_of(m)
            row = {"id": m, "name": self.name if m == self.id else (rec.name if rec is not None else m[:12])}
            if with_state:
                row["state"] = "alive" if m == self.id else _SHOWN.get(self.roster.state_of(m), "lost")
            rows.append(row)
        return rows

    def join(self, now: float, name: str, private: bool, since: float | None) -> tuple[dict, list]:
        name = normalize_group(name)
        problem = check_group_name(name)
        if problem is not None:
            raise GroupError(ErrorCode.BAD_REQUEST, problem)
        wire = self.wire_of(name)
        if wire is not None and wire.startswith("~") != private:
            kind = "a private" if wire.startswith("~") else "the open"
            raise GroupError(ErrorCode.BAD_REQUEST, f"this node is in {kind} group named {name!r} already: "
                                                    f"leave it first (p2pctl leave {name})")
        acts: list = []
        already = wire is not None
        if not already:
            if len(self.joined) >= MAX_GROUPS:
                raise GroupError(ErrorCode.BAD_REQUEST, f"this node is in {MAX_GROUPS} groups, the most a record lists: "
                                                        f"leave one first (p2pctl leave GROUP)")
            entries = self.record_entries(0) + ((f"~{'0' * 32}:{'0' * 32}",) if private else (name,))
            if sum(len(e.encode("utf-8")) for e in entries) > MAX_GROUP_BYTES:
                raise GroupError(ErrorCode.BAD_REQUEST, f"the groups this node is in would take more than {MAX_GROUP_BYTES} bytes "
                                                        f"in its record: leave one, or use shorter names")
            if private:  # the group we were invited to, else a new one
                gid = next((g for g, gk in self.keys.items() if gk.group == name), None)
                if gid is None:
                    gk = new_group_key(name, self.randbytes(32))
                    gid = group_id(gk)
                    self.keys[gid] = gk
                wire = "~" + gid
            else:
                wire = name
            self.joined[wire] = name
            self._save()
            self.resign(now)
            acts += self._rescan(now) if private else []
            log.info("joined group %r%s", name, " (private)" if private else "")
        if since is not None:
            acts += self._ask_since(now, wire, since)
        result = {"group": name, "private": private, "already": already, "members": self._member_rows(wire),
                  "invited_by": self.inviters.get(wire[1:]) if private else None}
        return result, acts

    def _ask_since(self, now: float, wire: str, since: float) -> list:
        data: dict = {"group": wire, "since": since}
        if wire.startswith("~"):
            inc = self.incarnation()
            data["tag"], data["inc"] = member_tag(self.keys[wire[1:]], self.id, inc), inc
        return [self.out.send(m, self.out.msg(now, P.FETCH, data, target=m)) for m in self.members(wire, with_self=False)]

    def leave(self, now: float, name: str) -> dict:
        name = normalize_group(name)
        wire = self.wire_of(name)
        if wire is None:
            raise GroupError(ErrorCode.NOT_MEMBER, f"this node is not in group {name!r} (p2pctl groups lists the groups it is in)")
        del self.joined[wire]
        if wire.startswith("~"):
            self.keys.pop(wire[1:], None)  # a private group's key goes with it: back in only by a new invitation
            self.inviters.pop(wire[1:], None)
            self.former[wire[1:]] = name
            while len(self.former) > MAX_FORMER:
                del self.former[next(iter(self.former))]
        self._save()
        self.resign(now)
        return {"group": name, "private": wire.startswith("~")}

    def describe(self) -> list[dict]:
        """Every group we know of: in the directory, joined, or invited to."""
        wires = set(self.directory.groups()) | set(self.joined) | {"~" + gid for gid in self.keys}
        rows = []
        for wire in wires:
            shown = self.shown(wire)
            if shown is None:
                continue
            members = self._member_rows(wire, with_state=True)
            rows.append({"group": shown, "private": wire.startswith("~"), "joined": wire in self.joined,
                         "invited": wire.startswith("~") and wire not in self.joined,
                         "invited_by": self.inviters.get(wire[1:]) if wire.startswith("~") else None,
                         "count": len(members), "members": members})
        return sorted(rows, key=lambda r: (r["group"], r["private"]))

    def invite(self, now: float, name: str, peer_id: str) -> list:
        """Send a private group's key to ``peer_id`` through the outbox (durable, sealed end to end when routed)."""
        name = normalize_group(name)
        wire = self.wire_of(name)
        if wire is None:
            raise GroupError(ErrorCode.NOT_MEMBER, f"this node is not in group {name!r}: join it first (p2pctl join {name} --private)")
        if not wire.startswith("~"):
            raise GroupError(ErrorCode.BAD_REQUEST, f"{name!r} is an open group: anyone joins it with p2pctl join {name}; "
                                                    f"invitations are for private groups (p2pctl join GROUP --private)")
        text = orjson.dumps(invite_payload(self.keys[wire[1:]])).decode()
        epoch = self.out.epoch(now)
        self.msgs.delivery.enqueue(peer_id, self.out.new_id(epoch), text, P.utc_timestamp(epoch), epoch, group=INVITE)
        return self.msgs.pump(now, peer_id) if self.reach(peer_id) else []

    def on_invite(self, now: float, peer, text: str) -> list:
        """A MESSAGE with ``invite``: a private group's key from ``peer``."""
        try:
            gk = accept_invite(orjson.loads(text))
        except (orjson.JSONDecodeError, GroupKeyError) as e:
            self.drop(now, "bad_invite", f"invitation that does not parse: {e}", peer.name)
            return []
        gid = group_id(gk)
        if gid in self.keys:
            return []
        if self.wire_of(gk.group) is not None and self.wire_of(gk.group).startswith("~"):
            log.info("invitation to another private group named %r ignored: this node is in one by that name", gk.group)
            return []
        pending = [g for g in self.keys if "~" + g not in self.joined]
        for old in [g for g in pending if self.keys[g].group == gk.group] or pending[:max(0, len(pending) - MAX_INVITES + 1)]:
            del self.keys[old]  # an earlier invitation to a group of that name (the newest wins), or the oldest of too many
            self.inviters.pop(old, None)
        self.keys[gid] = gk
        self.inviters[gid] = {"id": peer.id, "name": peer.name}
        self._save()
        log.info("invited to private group %r by %s (%s): p2pctl join %s --private", gk.group, peer.name, peer.id[:12], gk.group)
        return self._rescan(now) + self.watchers.emit(now, "invited", group=gk.group, by={"id": peer.id, "name": peer.name})

    # ------------------------------------------------------------------ shouts out
    def shout(self, now: float, name: str, texts: list[str]) -> tuple[dict, list]:
        name = normalize_group(name)
        wire = self.wire_of(name)
        if wire is None:
            raise GroupError(ErrorCode.NOT_MEMBER, f"this node is not in group {name!r}: join it first (p2pctl join {name})")
        members = self.members(wire, with_self=False)
        epoch = self.out.epoch(now)
        timestamp = P.utc_timestamp(epoch)
        delivery, acts, ids = self.msgs.delivery, [], []
        unicast: set[str] = set()
        for text in texts:
            msg_id = self.out.new_id(epoch)
            ids.append(msg_id)
            n = self.counts.next(wire)
            self.store.add_message("out", P.SHOUT, msg_id, None, self.id, self.name, None, text, timestamp, epoch,
                                   defer=True, group=wire)
            to: dict[str, list[int]] = {}
            for m in members:
                seq = delivery.enqueue(m, msg_id, text, timestamp, epoch, group=wire)
                base = delivery.claim(m, seq, now) if len(to) < MAX_TO and self.reach(m) else None
                if base is not None:
                    to[m] = [seq, base]
                else:
                    unicast.add(m)
            if to:
                body = text
                if wire.startswith("~"):
                    body = seal_shout(self.keys[wire[1:]], self.randbytes(24), self.id, n, text)
                d = {"g": wire, "o": self.id, "mid": msg_id, "ts": timestamp, "ep": self.store.epoch, "n": n, "body": body, "to": to}
                d["sig"] = self.sign(signed_bytes(d)).hex() if self.sign is not None else None
                acts += self._forward(now, d, list(to), None)
        self._save()
        self.stats["shouts_out"] += len(texts)
        for m in sorted(unicast):
            if self.reach(m):
                acts += self.msgs.pump(now, m)
        result = {"ids": ids} if len(texts) > 1 else {"id": ids[0]}
        return {**result, "group": name, "private": wire.startswith("~"), "members": len(members), "status": "sent"}, acts

    def _forward(self, now: float, d: dict, fwd: list[str], came_from: str | None) -> list:
        """Copies of a SHOUT towards ``fwd``, one per first hop (`split_by_tree`)."""
        by_hop, unreachable = split_by_tree(fwd, self.routes.hops, self.routes.neighbours)
        acts = []
        ttl = d.get("ttl", SHOUT_TTL + 1) - 1
        for hop, share in by_hop.items():
            if hop == came_from:
                self.stats["shout_loops"] += len(share)  # their routes and ours disagree: the outbox resends
                continue
            acts.append(self.out.send(hop, self.out.msg(now, P.SHOUT, {**d, "fwd": share, "ttl": ttl})))
            self.stats["shout_copies_out"] += 1
        self.stats["shout_unreachable"] += len(unreachable)
        return acts

    # ------------------------------------------------------------------ shouts in
    def on_shout(self, now: float, msg: P.Message, hop) -> list:
        """A SHOUT from neighbour ``hop``: ours to store (as the MESSAGE from its origin it
        stands for), to pass on, or both."""
        d = msg.data
        problem = check_shout(d)
        if problem is not None:
            self.drop(now, "shout_malformed", f"SHOUT with a bad {problem}", hop.name)
            return []
        origin = d["o"]
        if origin == self.id:
            self.drop(now, "shout_own", "our own SHOUT came back", hop.name)
            return []
        if self.sign is not None and not self._verified(now, d, hop.name):
            return []
        acts: list = []
        fwd = d["fwd"]
        if self.id in fwd:
            acts += self._take(now, d)
            fwd = [m for m in fwd if m != self.id]
        if fwd:
            if d["ttl"] <= 0:
                self.drop(now, "shout_ttl", f"SHOUT from {origin[:12]} out of hops", hop.name)
            else:
                self.stats["shouts_relayed"] += 1
                acts += self._forward(now, d, fwd, hop.id)
        return acts

    def _verified(self, now: float, d: dict, source: str) -> bool:
        key = self.verify_key_of(d["o"])
        if key is None:
            self.drop(now, "shout_unverified", f"SHOUT from {d['o'][:12]}, a node we hold no record of", source)
            return False
        try:
            _check_sig(key, signed_bytes(d), bytes.fromhex(d["sig"]) if d["sig"] else b"")
        except (BadRecord, ValueError):
            self.drop(now, "shout_bad_sig", f"SHOUT from {d['o'][:12]} with a bad signature", source)
            return False
        return True

    def _take(self, now: float, d: dict) -> list:
        wire, origin = d["g"], d["o"]
        text = d["body"]
        if wire.startswith("~"):
            gk = self.keys.get(wire[1:])
            if gk is None:
                text = ""  # not ours to read: taken (and acknowledged) unstored, as by a node that left
            else:
                try:
                    text = open_shout(gk, d["body"], origin, d["n"])
                except GroupKeyError as e:
                    self.drop(now, "shout_bad_box", f"private SHOUT from {origin[:12]} that does not open: {e.kind}", origin[:12])
                    return []  # the outbox resends it end to end
        seq, base = d["to"][self.id]
        inner = P.Message(P.MESSAGE, d["mid"], origin, _name_or(self.roster, origin), d["ts"],
                          {"text": text, "seq": seq, "base": base, "epoch": d["ep"], "group": wire}, self.id)
        return self.deliver(now, inner)

    def _proves_key(self, wire: str, node_id: str, inc, tag) -> bool:
        try:
            return type(inc) is int and is_member_tag(self.keys[wire[1:]], node_id, inc, tag)
        except GroupKeyError:
            return False

    def on_fetch(self, now: float, msg: P.Message, peer) -> list:
        """FETCH ``{"group", "since"}``: a member that joined with ``--since`` asks for our shouts."""
        data = msg.data
        wire, since = data.get("group"), data.get("since")
        if not valid_group_key(wire) or since is None:
            self.drop(now, "bad_field", "FETCH of a group needs a group name and since", peer.name)
            return []
        if wire not in self.joined:
            return []
        if wire.startswith("~") and not self._proves_key(wire, peer.id, data.get("inc"), data.get("tag")):
            self.drop(now, "fetch_not_member", f"{peer.name} asked for a private group's shouts without its key", peer.name)
            return []
        rows = self.store.own_shouts_since(wire, since, FETCH_MAX)
        queued = self.store.outbox_ids(peer.id, [r[0] for r in rows])  # asked before: what it has or will have
        rows = [r for r in rows if r[0] not in queued]
        epoch = self.out.epoch(now)
        for msg_id, text, timestamp in rows:
            self.msgs.delivery.enqueue(peer.id, msg_id, text, timestamp, epoch, group=wire)
        self.stats["shouts_replayed"] += len(rows)
        return self.msgs.pump(now, peer.id) if rows and self.reach(peer.id) else []


_SHOWN = {"alive": "alive", "suspect": "suspect", "dead": "lost", "left": "left"}


def _name_or(roster, node_id: str) -> str:
    rec = roster.record_of(node_id)
    return rec.name if rec is not None else node_id[:12]
