"""A thread-safe LRU cache of spectrograms, bounded in bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any


class ByteLRU:
    """Maps keys to (value, nbytes); evicts least recently used entries past `max_bytes`.

    max_bytes 0 turns the cache off (every get misses, nothing is kept).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._entries: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key, value, nbytes: int) -> None:
        if nbytes > self.max_bytes:
            return  # larger than the whole cache (or cache off): keeping it would evict everything
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries
