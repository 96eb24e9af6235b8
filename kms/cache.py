"""A bounded, thread-safe LRU of unwrapped keys.

Owns: how long an unwrapped key may stay in memory (max_age seconds since it was put), how many times it may be
handed out (max_uses), and how many keys may be held at once (max_entries). Time is passed in (`now`) so tests, not
the wall clock, decide when an entry expires.
Never: hands out an expired or over-used key, or lets an evicted key live on: every DataKey that leaves the cache is
wiped (its bytearray zeroed, its AEAD object dropped). Callers that must keep using a key after it may be evicted
take a clone (KeyManager does).

Expired entries do not wait to be asked for: every get/put sweeps the whole cache when a sweep is due (at most every
max_age / 4 seconds of the caller's clock), and `sweep(now)` does it on demand, so an unwrapped key that nobody uses
any more is wiped within about 1.25 x max_age of being unwrapped as long as the process uses the cache at all.
Never logs or shows what it holds; cache keys are opaque tuples chosen by the caller.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from kms.keys import DataKey


class _Entry:
    __slots__ = ("born", "key", "uses")

    def __init__(self, key: DataKey, born: float) -> None:
        self.key = key
        self.born = born
        self.uses = 0


class KeyCache:
    def __init__(self, *, max_entries: int = 10_000, max_age: float = 300.0, max_uses: int = 100_000) -> None:
        if max_entries < 1 or max_uses < 1 or max_age <= 0:
            raise ValueError("max_entries and max_uses must be >= 1 and max_age > 0")
        self.max_entries = max_entries
        self.max_age = float(max_age)
        self.max_uses = max_uses
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._sweep_every = self.max_age / 4
        self._swept: float | None = None
        # Optional observer of every lookup (True: served from the cache); set by the service for its metrics.
        self.on_lookup: Callable[[bool], None] | None = None

    def get(self, cache_key: Hashable, *, now: float) -> DataKey | None:
        """The cached key (counting one use), or None if absent, too old or used up."""
        key = self._get(cache_key, now)
        if self.on_lookup is not None:
            self.on_lookup(key is not None)
        return key

    def _get(self, cache_key: Hashable, now: float) -> DataKey | None:
        with self._lock:
            self._sweep_if_due(now)
            entry = self._entries.get(cache_key)
            if entry is None:
                return None
            if now - entry.born >= self.max_age or entry.uses >= self.max_uses:
                self._drop(cache_key)
                return None
            entry.uses += 1
            self._entries.move_to_end(cache_key)
            return entry.key

    def put(self, cache_key: Hashable, key: DataKey, *, now: float) -> None:
        with self._lock:
            self._sweep_if_due(now)
            old = self._entries.pop(cache_key, None)
            if old is not None and old.key is not key:
                old.key.wipe()
            self._entries[cache_key] = _Entry(key, now)
            while len(self._entries) > self.max_entries:
                _, lru = self._entries.popitem(last=False)
                lru.key.wipe()

    def sweep(self, *, now: float) -> int:
        """Wipe and drop every expired or used-up entry now; returns how many were dropped."""
        with self._lock:
            return self._sweep(now)

    def _sweep_if_due(self, now: float) -> None:
        if self._swept is None:
            self._swept = now
        elif now - self._swept >= self._sweep_every:
            self._sweep(now)

    def _sweep(self, now: float) -> int:
        self._swept = now
        stale = [k for k, e in self._entries.items() if now - e.born >= self.max_age or e.uses >= self.max_uses]
        for cache_key in stale:
            self._drop(cache_key)
        return len(stale)

    def evict(self, cache_key: Hashable) -> None:
        with self._lock:
            self._drop(cache_key)

    def evict_where(self, pred: Callable[[Hashable], bool]) -> None:
        with self._lock:
            for cache_key in [k for k in self._entries if pred(k)]:
                self._drop(cache_key)

    def clear(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                entry.key.wipe()
            self._entries.clear()

    def _drop(self, cache_key: Hashable) -> None:
        entry = self._entries.pop(cache_key, None)
        if entry is not None:
            entry.key.wipe()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        return (f"KeyCache(entries={len(self)}, max_entries={self.max_entries}, max_age={self.max_age}, "
                f"max_uses={self.max_uses})")
