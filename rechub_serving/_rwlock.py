"""A readers-writer lock for engines: many searches at once, one mutation alone.

Most engines search concurrently (their search releases the GIL) but must not
be resized, remapped, saved or closed under a running search. Searches take
the shared side, mutations the exclusive side. A waiting writer blocks new
readers, so a stream of queries cannot starve an ``add``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["ReadWriteLock"]


class ReadWriteLock:
    """Shared (read) / exclusive (write) lock with writer priority. Not reentrant."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_shared(self) -> None:
        """Take the shared side (prefer :meth:`shared`; this is for hot paths)."""
        with self._mutex:  # the plain lock: no Condition frame on the uncontended path
            if not (self._writer or self._writers_waiting):
                self._readers += 1
                return
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_shared(self) -> None:
        with self._mutex:
            self._readers -= 1
            if not self._readers and self._writers_waiting:
                self._cond.notify_all()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the shared side for the ``with`` block (searches)."""
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the exclusive side for the ``with`` block (add, remove, save, close)."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
