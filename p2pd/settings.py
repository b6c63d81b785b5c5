"""Settings: defaults, the TOML config file, and command-line overrides, in that order.

Every setting has one name used in the config file, in `p2pd start` flags
(with dashes) and here.  Units are in the names (``_s`` seconds) because a
unit mix-up is how Zyre once set a high-water mark 1000x too large.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .protocol import DEFAULT_MAX_FRAME_BYTES, valid_host, valid_name

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    pass


@dataclass
class Settings:
    port: int = 5000  # ROUTER port for peer links; 0 picks a free one
    pub_port: int | None = None  # PUB port for broadcasts; default port+1 (0 if port is 0)
    host: str = "0.0.0.0"  # interface to bind
    advertise: str | None = None  # address other nodes should dial; several, comma-separated, on a multi-homed host
    name: str | None = None
    log_level: str = "info"
    join: list = field(default_factory=list)  # bootstrap peers, "host:port"
    heartbeat_interval_s: float = 2.0  # two PINGs per timeout at least; each link costs a PING and a PONG per interval when idle
    heartbeat_timeout_s: float = 5.0
    gossip_interval_s: float = 10.0
    retry_min_s: float = 1.0
    retry_max_s: float = 30.0
    forget_after_s: float = 3600.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_peers: int = 256
    active_view: int = 8  # live links kept (HyParView's active view, docs/SCALE.md); a network this small stays a full mesh
    passive_view: int = 30  # nodes kept as candidates to replace a lost link
    max_leaves: int = 64  # simple JSON peers (leaves) in the table at most, within max_peers: the rest stays for the overlay
    max_inbound: int = 1024  # TCP connections to our ports held at once (peer, broadcast, key); more are refused
    max_inbound_per_host: int = 128  # ... and from any one source address (a node uses 2, plus key fetches)
    inbox_size: int = 1000  # `p2pctl inbox` lists at most this many of the newest messages
    send_window: int = 1000  # direct messages in flight per peer before the sender waits for ACKs
    ack_timeout_s: float = 2.0  # no ACK progress for this long: resend from the oldest unacknowledged
    message_expiry_s: float = 7 * 86400.0  # an undelivered direct message is given up after this
    retention_s: float = 30 * 86400.0  # history and delivered outbox rows older than this are pruned
    max_stored_messages: int = 1_000_000  # history rows kept at most (oldest pruned first)
    insecure: bool = False  # plaintext links (no CURVE): only to talk to simple JSON peers
    key_port: int | None = None  # plaintext port that tells our public key (TOFU); default port+2
    max_msgs_per_s: float = 100_000.0  # frames accepted per peer per second (burst: one second's worth); above what one node takes in
    durability: str = "normal"  # "normal": survives a killed daemon; "full": also power loss (slower)
    discover: str = "none"  # "lan": find nodes on the local network by UDP beacons (p2pd/lan.py)
    discover_port: int = 5670  # UDP port beacons are sent to and heard on
    discover_interval_s: float = 1.0  # one beacon this often
    discover_to: str = "255.255.255.255"  # where beacons go: a broadcast address (a subnet's picks its interface)

    def validate(self) -> "Settings":
        def port_ok(v):
            return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535

        if not port_ok(self.port):
            raise ConfigError(f"port must be 0-65535, got {self.port!r}")
        if self.pub_port is not None and not port_ok(self.pub_port):
            raise ConfigError(f"pub_port must be 0-65535, got {self.pub_port!r}")
        if self.pub_port is not None and self.pub_port and self.pub_port == self.port:
            raise ConfigError("pub_port must differ from port")
        if self.key_port is not None and not port_ok(self.key_port):
            raise ConfigError(f"key_port must be 0-65535, got {self.key_port!r}")
        if not isinstance(self.insecure, bool):
            raise ConfigError(f"insecure must be true or false, got {self.insecure!r}")
        if not isinstance(self.max_msgs_per_s, (int, float)) or isinstance(self.max_msgs_per_s, bool) or not 0 < self.max_msgs_per_s < float("inf"):
            raise ConfigError(f"max_msgs_per_s must be a positive number, got {self.max_msgs_per_s!r}")
        if self.pub_port is None and self.port == 65535:
            raise ConfigError("port 65535 leaves no room for the default broadcast port (port+1); set pub_port / --pub-port")
        if self.key_port is None and not self.insecure and self.port >= 65534:
            raise ConfigError("port 65534 and 65535 leave no room for the default key port (port+2); set key_port")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        for name in ("heartbeat_interval_s", "heartbeat_timeout_s", "gossip_interval_s", "retry_min_s", "retry_max_s", "forget_after_s",
                     "ack_timeout_s", "message_expiry_s", "retention_s", "discover_interval_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 < v < float("inf"):
                raise ConfigError(f"{name} must be a positive number of seconds, got {v!r}")
        for name in ("host", "advertise", "name"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ConfigError(f"{name} must be a string, got {v!r}")
        if self.name is not None and not valid_name(self.name):
            raise ConfigError(f"name {self.name!r} is not allowed: 1-64 characters, none of them a control, format "
                              f"(bidi override, zero-width ...) or line-separator character")
        for one in self.advertised():
            if not valid_host(one):
                raise ConfigError(f"advertise {one!r} is not an IP address or a host name (RFC 1123): peers would refuse its JOIN")
        if self.advertise is not None and not 1 <= len(self.advertised()) <= 8:
            raise ConfigError(f"advertise {self.advertise!r} must name 1 to 8 addresses, comma-separated")
        if self.heartbeat_timeout_s <= self.heartbeat_interval_s:
            raise ConfigError("heartbeat_timeout_s must be larger than heartbeat_interval_s")
        if self.discover not in ("none", "lan"):
            raise ConfigError(f"discover must be \"none\" or \"lan\", got {self.discover!r}")
        if not port_ok(self.discover_port) or self.discover_port == 0:
            raise ConfigError(f"discover_port must be 1-65535, got {self.discover_port!r}")
        if not _ipv4(self.discover_to):
            raise ConfigError(f"discover_to must be an IPv4 broadcast address such as 255.255.255.255 or 192.168.1.255, got {self.discover_to!r}")
        if self.durability not in ("normal", "full"):
            raise ConfigError(f"durability must be \"normal\" or \"full\", got {self.durability!r}")
        if isinstance(self.send_window, int) and self.send_window > 5000:
            raise ConfigError("send_window must be at most 5000 (it must stay well below the link queue of 10,000 frames)")
        for name in ("max_frame_bytes", "max_peers", "inbox_size", "send_window", "max_stored_messages", "max_inbound", "max_inbound_per_host",
                     "max_leaves", "active_view", "passive_view"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if isinstance(self.active_view, int) and self.active_view > 16:
            raise ConfigError("active_view must be at most 16 (a node record lists at most 16 links)")
        if self.active_view < 3:
            # Two links each is a ring: once one closes, its nodes are all full and nothing joins it
            # (in the simulator, 30 nodes with 2 split into separate rings in 20 seeds of 20).
            raise ConfigError(f"active_view must be at least 3 (default 8), got {self.active_view}: with fewer links per node "
                              "the overlay closes into separate rings that never merge")
        if not isinstance(self.join, list) or not all(isinstance(j, str) for j in self.join):
            raise ConfigError("join must be a list of \"host:port\" strings")
        for j in self.join:
            parse_host_port(j)
        return self

    def advertised(self) -> list[str]:
        """The addresses of ``advertise`` (several on a multi-homed host: each subnet dials its own)."""
        if not isinstance(self.advertise, str):
            return []
        return [a.strip() for a in self.advertise.split(",") if a.strip()]

    @property
    def effective_pub_port(self) -> int:
        if self.pub_port is not None:
            return self.pub_port
        return self.port + 1 if self.port else 0


SETTING_NAMES = frozenset(f.name for f in fields(Settings))


def _ipv4(text) -> bool:
    parts = text.split(".") if isinstance(text, str) else []
    return len(parts) == 4 and all(p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts)


def parse_host_port(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``tcp://host:port`` -> (host, port)."""
    s = text.strip()
    if s.startswith("tcp://"):
        s = s[6:]
    host, sep, port = s.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{text!r} is not HOST:PORT (for example 192.168.1.7:5000)")
    return host, int(port)


def build(file_values: dict, overrides: dict) -> Settings:
    """Defaults < config file < flags (``None`` in overrides means "not given")."""
    values = dict(file_values)
    values.update({k: v for k, v in overrides.items() if v is not None and v != () and v != []})
    if "join" in overrides and overrides["join"]:
        values["join"] = list(file_values.get("join", [])) + list(overrides["join"])
    try:
        s = Settings(**values)
    except TypeError as e:
        raise ConfigError(str(e)) from None
    return s.validate()
