"""Placeholder: the storage protocol (replaced by the storage branch)."""

from __future__ import annotations

from typing import Protocol


class Storage(Protocol):
    epoch: str
