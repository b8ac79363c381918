"""A bounded, thread-safe cache keyed by an ExitTable's content, for whoever computes about a table.

The table caches only what it computes about itself (probabilities, predictions, criterion scores);
solvers (their sort orders, searches, learned scores) and the app (its image rankings) keep their own
results here, keyed by ``table.fingerprint`` and their parameters, so that equal tables share entries,
no table object is written to, and threads (the app's sessions share tables) can use one cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np


class TableCache:
    """What others compute about ExitTables, for ``size`` (table, key) pairs, least recently used first out.

    Keyed by ``(table.fingerprint,) + key``, so equal tables share entries and a table object is never
    written to. Two threads asking for the same missing entry may both compute it (the result is the
    same); the lock only guards the dictionary, so one slow fit never blocks fits of other tables.
    """

    def __init__(self, size: int):
        self.size = size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, table, key: tuple, make):
        """The entry for (table content, ``key`` a hashable tuple), computed by ``make()`` when missing."""
        full_key = (table.fingerprint,) + tuple(key)
        with self._lock:
            if full_key in self._entries:
                self._entries.move_to_end(full_key)
                return self._entries[full_key]
        value = make()
        if isinstance(value, np.ndarray):
            value.setflags(write=False)  # shared by every caller: nobody may change it
        with self._lock:
            self._entries[full_key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every entry (e.g. to time a cold first fit)."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
