"""SHA-256 without OpenSSL, for the two hashes p2pd makes: a node id from its public key
(`p2pd.keys.node_id_for`) and a short control-socket name for a long home path
(`p2pd.home.Home.socket_path`).

A module of its own because both need it and keys.py builds on home.py: when the hash lived
in keys.py, home.py had to import keys (a cycle, hidden in a function-local import).
"""

from __future__ import annotations


def _builtin_sha256():
    """CPython's own SHA-256 where it has one: importing hashlib maps OpenSSL's
    libcrypto into the daemon, about 3.4 MiB of RSS for one hash of a key."""
    try:
        from _sha256 import sha256 as impl  # CPython 3.11
    except ImportError:
        try:
            from _sha2 import sha256 as impl  # CPython 3.12 and later
        except ImportError:
            from hashlib import sha256 as impl
    return impl


sha256 = _builtin_sha256()


def _builtin_blake2b():
    """CPython's own BLAKE2b (keyed, personalised), for the same reason as `sha256`."""
    try:
        from _blake2 import blake2b as impl
    except ImportError:
        from hashlib import blake2b as impl
    return impl


blake2b = _builtin_blake2b()


def _builtin_sha512():
    """CPython's own SHA-512 (records.py's Ed25519 signing), for the same reason as `sha256`."""
    try:
        from _sha512 import sha512 as impl  # CPython 3.11
    except ImportError:
        try:
            from _sha2 import sha512 as impl  # CPython 3.12 and later
        except ImportError:
            from hashlib import sha512 as impl
    return impl


sha512 = _builtin_sha512()
