"""Who may talk to this node, and which key belongs to which address.

How this works
--------------
In secure mode (the default) every TCP socket uses CURVE.  ZeroMQ asks us,
through ZAP, whether a connecting key may in; `Trust.authorize` answers and
names the node id that key owns, which ZeroMQ then attaches to every frame
as its User-Id.  The node drops any frame whose claimed ``sender_id`` is not
that id: names are labels, ids are the truth.

Keys reach us three ways: in a ``p2p://KEY@host:port`` connect string, from
a peer's key port on first contact (then pinned, as ssh pins host keys), or
in PEERS gossip from an authenticated peer.  A pinned address that later
shows another key is refused until the user forgets the pin.

Pure: the daemon loads the files and hands the contents in.
"""

from __future__ import annotations

from collections import OrderedDict

from .digest import sha256
from .protocol import host_port, valid_key

KEYS_REMEMBERED = 4096  # node id -> key of recent ZAP answers, to name a key in a log line


def node_id_for(public_key: str) -> str:
    """The node id that belongs to a public key: the first 32 hex digits of its SHA-256."""
    return sha256(public_key.encode("ascii")).hexdigest()[:32]


class Trust:
    def __init__(self, public_key: str | None, secure: bool, pins: dict[str, str] | None = None, allowed: set[str] | None = None):
        self.public_key = public_key
        self.secure = secure and public_key is not None
        self.pins: dict[str, str] = dict(pins or {})
        self.allowed: set[str] | None = set(allowed) if allowed else None
        self._recent: OrderedDict[str, str] = OrderedDict()  # node id -> the key ZAP last let in for it

    @property
    def allowlist_mode(self) -> bool:
        return self.allowed is not None

    def set_allowed(self, keys: set[str] | None) -> None:
        self.allowed = set(keys) if keys else None

    def authorize(self, key: str | None) -> tuple[bool, str, str]:
        """ZAP: (allowed, user id, reason)."""
        if key is None or not valid_key(key):
            return False, "", "no CURVE key"
        if self.allowed is not None and key not in self.allowed:
            return False, "", "key not in authorized_keys"
        user_id = node_id_for(key)
        self._recent[user_id] = key
        self._recent.move_to_end(user_id)
        if len(self._recent) > KEYS_REMEMBERED:
            self._recent.popitem(last=False)
        return True, user_id, "OK"

    def key_of(self, node_id: str) -> str | None:
        """The CURVE key ZAP recently let in as ``node_id`` (bounded memory: None if long ago)."""
        return self._recent.get(node_id)

    def may_link(self, peer_id: str, key: str | None) -> str | None:
        """None if we may link to this peer with this key, else why not."""
        if not self.secure:
            return None
        if key is None or not valid_key(key):
            return "no public key known for it"
        if node_id_for(key) != peer_id:
            return "its key does not match its id"
        if self.allowed is not None and key not in self.allowed:
            return "its key is not in authorized_keys"
        return None

    def check_pin(self, address: str, key: str) -> str | None:
        """None if ``key`` may be used for ``address`` (host:port), else the refusal."""
        pinned = self.pins.get(address)
        if pinned is None or pinned == key:
            return None
        return (f"the key of {address} has changed (pinned {pinned[:8]}..., now {key[:8]}...): it may be a different node or an attack; "
                f"if the change is expected, run: p2pctl known forget {address}")

    def pin_refusal(self, host: str | None, port: int, key: str | None) -> str | None:
        """Why ``key`` may not be linked at host:port (its address is pinned to another key), else None."""
        if not self.secure or host is None or key is None:
            return None
        return self.check_pin(host_port(host, port), key)

    def forget(self, match: str) -> int:
        """Drop the pins whose address, key or node id is ``match`` (`p2pctl known forget`); how many."""
        gone = [a for a, k in self.pins.items() if match in (a, k, node_id_for(k))]
        for address in gone:
            del self.pins[address]
        return len(gone)

    def pin(self, address: str, key: str) -> bool:
        """Remember the key first seen at an address; True if it was new."""
        if address in self.pins:
            return False
        self.pins[address] = key
        return True
