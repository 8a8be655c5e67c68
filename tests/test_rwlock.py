"""The readers-writer lock that engines share."""

from __future__ import annotations

import threading
import time

from rechub_serving._rwlock import ReadWriteLock


def test_readers_share_and_a_writer_waits_for_them():
    lock = ReadWriteLock()
    events: list[str] = []
    reading = threading.Event()
    release = threading.Event()

    def reader():
        with lock.shared():
            events.append("read")
            reading.set()
            release.wait(5)
        events.append("read done")

    def writer():
        with lock.exclusive():
            events.append("write")

    r = threading.Thread(target=reader)
    r.start()
    reading.wait(5)
    with lock.shared():  # a second reader gets in while the first holds it
        events.append("second read")
    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.05)
    assert "write" not in events  # the writer waits for the reader
    release.set()
    r.join(5)
    w.join(5)
    assert events.index("write") > events.index("read done")


def test_waiting_writer_blocks_new_readers():
    lock = ReadWriteLock()
    lock.acquire_shared()
    order: list[str] = []
    release_writer = threading.Event()

    def writer():
        with lock.exclusive():
            order.append("write")
            release_writer.wait(5)

    def late_reader():
        with lock.shared():
            order.append("late read")

    w = threading.Thread(target=writer, daemon=True)
    w.start()
    time.sleep(0.05)
    late = threading.Thread(target=late_reader, daemon=True)
    late.start()
    time.sleep(0.05)
    assert order == []  # the writer waits for the first reader, the late reader for the writer
    lock.release_shared()
    time.sleep(0.05)
    assert order == ["write"]
    release_writer.set()
    w.join(5)
    late.join(5)
    assert order == ["write", "late read"]
