"""Both message stores for the contract tests of `p2pd.storage.Storage`: `StoreKit` and `store_kit`.

A test that takes the ``store_kit`` fixture runs once on the SQLite store (in a file) and once
on the in-memory one.  ``kit.open()`` makes an empty store; ``kit.restart(store)`` is what a
kill -9 and a start again leave to the next process: for SQLite the connection is dropped
without a commit and the file opened again, for memory `MemoryStore.crash` undoes what was not
committed and the same object is handed on (as the simulator does).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pd.memstore import MemoryStore
from p2pd.store import Store

KINDS = ("sqlite", "memory")


class StoreKit:
    def __init__(self, kind: str, path: Path):
        self.kind = kind
        self.path = path

    def open(self):
        return Store(self.path) if self.kind == "sqlite" else MemoryStore(os.urandom)

    def restart(self, store):
        """The process died (no clean close, no commit) and a new one opens the store."""
        if self.kind == "sqlite":
            store.db.close()
            return Store(self.path)
        store.crash()
        return store

    def close(self, store) -> None:
        if self.kind == "sqlite":
            store.close()


@pytest.fixture(params=KINDS)
def store_kit(request, tmp_path) -> StoreKit:
    return StoreKit(request.param, tmp_path / "store.db")
