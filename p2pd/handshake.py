"""JOIN: the introduction every link starts with, and what a JOIN on a link we have means.

How this works
--------------
To reach a peer we open a DEALER to its ROUTER and send JOIN (`link_to`); a JOIN that is
not itself a reply is answered with a JOIN carrying ``reply_to`` over our own DEALER, so
both sides end up with one link each way (the answering is composed in `Node`, which
also admits or refuses the JOIN).  Our JOIN says where we listen (``addr`` None: "use the
address you see"), our key, what we take (``batch``, ``rid_suffix``, ``digest``), this run of the
node (``boot``: a peer that sees it change knows we restarted), our broadcast numbers and,
to a known peer, how far we received its numbering (`Messaging.received`).

`stale_link` decides whether a JOIN from a peer we are linked to means our link to it is
broken (it restarted, or it lost us) or only that both of us dialled at once.
Pure: no sockets; time is passed in.
"""

from __future__ import annotations

from . import protocol as P
from .links import Links
from .membership import Peer
from .messaging import Messaging
from .outbound import Outbound
from .settings import Settings
from .trust import Trust


class Handshake:
    def __init__(self, address: P.PeerAddress, boot: str, settings: Settings, trust: Trust, outbound: Outbound, links: Links,
                 messaging: Messaging):
        self.address = address  # what we advertise; addr None = "use what you see"
        self.boot = boot
        self.settings = settings
        self.trust = trust
        self.out = outbound
        self.links = links
        self.msgs = messaging

    def join(self, now: float, reply_to: str | None = None, again: bool = False, to: str | None = None) -> P.Message:
        """A JOIN; ``to``: the peer it goes to, if known (it then says how far we received that peer's numbering)."""
        a = self.address
        data = {"addr": a.addr, "port": a.port, "pub_port": a.pub_port, "reply_to": reply_to, "key": self.trust.public_key,
                "batch": True, "rid_suffix": True, "digest": True, "boot": self.boot, **self.msgs.beacon(), **self.msgs.received(to)}
        if again:
            data["again"] = True
        return self.out.msg(now, P.JOIN, data)

    def link_to(self, now: float, peer: Peer, again: bool = False) -> list:
        """Open (or reopen) a link to a known peer and introduce ourselves (``again``: we had lost it)."""
        acts = self.links.close(peer.id)
        if self.trust.may_link(peer.id, peer.key) is not None:
            return acts
        return acts + [self.links.open_to(now, peer), self.out.send(peer.id, self.join(now, again=again, to=peer.id))]

    def stale_link(self, now: float, peer: Peer, join: P.Message, restarted: bool) -> bool:
        """Does a JOIN from a peer we are linked to mean our link to it is broken?

        A p2pd peer says so: a new ``boot`` (it restarted) or ``again`` (it had
        lost us).  Anything else is both of us dialling at once (gossip told
        each of the other), and closing the link would only make both dial
        again.  A peer that sends neither: assume broken unless we opened the
        link moments ago.
        """
        if join.data.get("boot") is not None:
            return restarted or join.data.get("again") is True
        return self.links.age(now, peer.id) > self.settings.heartbeat_interval_s
