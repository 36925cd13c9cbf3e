"""A bounded per-process cache of decompressed input chunks, and a count of what reads decode.

Neighbouring blocks read the same input chunks for their halos: with ``(64, 64, 64)`` blocks
on ``(64, 256, 256)`` chunks every block decodes about 30 chunk-sized pieces of input for
one block's worth of output. :class:`ChunkCache` keeps decoded chunks (least recently used
first out, bounded in bytes) so that blocks of one task, and the next tasks on the same
worker, decode each chunk once::

    read box (block + halo) -> covering chunks -> cache hit: a view of the decoded chunk
                                               -> miss: decode the whole chunk once, keep it
                            -> cut the box out of the chunks

A cached chunk is kept with the inode, size, modification and change time of its file (its shard's,
for a sharded array) and read again when they change, so a changed input is never read
stale. Concurrent readers of one missing chunk wait for a single decode.

:data:`DECODED` counts the bytes of input chunks decoded in this process (cached reads and
uncached ones alike): ``benchmarks/overread.py`` reads it.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

AUTO_FRACTION = 8  # the automatic bound: this fraction of the process's memory ...
AUTO_MAX = 2 << 30  # ... and at most this many bytes


@dataclass
class Decoded:
    """Bytes of input chunks decoded by this process, and the cache's hits and misses."""

    bytes: int = 0
    hits: int = 0
    misses: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, nbytes: int = 0, hits: int = 0, misses: int = 0) -> None:
        with self.lock:
            self.bytes += nbytes
            self.hits += hits
            self.misses += misses

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {"bytes": self.bytes, "hits": self.hits, "misses": self.misses}

    def reset(self) -> None:
        with self.lock:
            self.bytes = self.hits = self.misses = 0


DECODED = Decoded()


def decoded() -> dict[str, int]:
    """This process's count: ``bytes`` of input chunks decoded, cache ``hits`` and ``misses``."""
    return DECODED.snapshot()


def file_stamp(path: str | None) -> tuple[int, int, int, int] | None:
    """Inode, size, modification and change time (ns) of ``path``; None when it does not exist."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class ChunkCache:
    """Decoded chunks by key, least recently used first out, at most ``capacity`` bytes.

    Thread-safe: the prefetch threads of a process share one cache. A chunk larger than the
    capacity is decoded and returned but not kept. Arrays handed out are read-only views of
    the cached ones."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, tuple[object, np.ndarray]] = OrderedDict()
        self._loading: dict[Hashable, Future[np.ndarray]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def resize(self, capacity: int) -> None:
        with self._lock:
            self.capacity = int(capacity)
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def get(self, key: Hashable, load: Callable[[], np.ndarray], stamp: object = None) -> np.ndarray:
        """The chunk ``key``: cached when it was decoded with the same ``stamp`` (its file's
        identity), else ``load()``-ed (once, however many threads ask) and kept. An exception
        of ``load`` reaches every thread that waited for it and nothing is kept."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == stamp:
                self._entries.move_to_end(key)
                DECODED.add(hits=1)
                return entry[1]
            pending = self._loading.get(key)
            if pending is None:
                pending = self._loading[key] = Future()
                owner = True
            else:
                owner = False
        if not owner:
            DECODED.add(hits=1)
            return pending.result()
        try:
            data = np.asarray(load())
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            pending.set_exception(exc)
            raise
        data.setflags(write=False)
        DECODED.add(data.nbytes, misses=1)
        with self._lock:
            del self._loading[key]
            old = self._entries.pop(key, None)
            if old is not None:
                self.nbytes -= old[1].nbytes
            if data.nbytes <= self.capacity:
                self._entries[key] = (stamp, data)
                self.nbytes += data.nbytes
                self._evict()
        pending.set_result(data)
        return data

    def _evict(self) -> None:
        while self.nbytes > self.capacity and self._entries:
            _, (_, data) = self._entries.popitem(last=False)
            self.nbytes -= data.nbytes


def process_memory() -> int:
    """The memory this process may use: its Dask worker's memory limit, else the machine's."""
    distributed = sys.modules.get("distributed")  # a Dask worker has imported it (never imported here)
    if distributed is not None:
        try:
            limit = distributed.get_worker().memory_manager.memory_limit
            if limit:
                return int(limit)
        except (ValueError, AttributeError):  # not in a worker
            pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


@lru_cache(maxsize=1)
def auto_capacity() -> int:
    """``input.chunk_cache_mib: auto``: 1/:data:`AUTO_FRACTION` of :func:`process_memory`, at most
    :data:`AUTO_MAX`."""
    return min(AUTO_MAX, process_memory() // AUTO_FRACTION)


@lru_cache(maxsize=1)
def _cache() -> ChunkCache:
    return ChunkCache(0)


def chunk_cache(mib: int | None) -> ChunkCache | None:
    """The process's cache bounded by ``mib`` MiB (None: :func:`auto_capacity`); None when
    ``mib`` is 0 (reads decode what they touch, uncached)."""
    if mib == 0:
        return None
    cache = _cache()
    capacity = auto_capacity() if mib is None else mib << 20
    if cache.capacity != capacity:
        cache.resize(capacity)
    return cache


def drop_chunk_cache() -> None:
    """Empty this process's cache (when no more input will be read: the later stages get its memory)."""
    _cache().clear()
