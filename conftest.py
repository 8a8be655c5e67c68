"""Repository-wide pytest setup (every test directory, the core's and the plugins')."""

from __future__ import annotations

import signal


def pytest_configure(config) -> None:
    # A shell that starts the suite as a background job (`cmd &`, some CI runners) makes it ignore
    # SIGINT, and child processes inherit that: the tests that press Ctrl-C on a child would see
    # nothing happen. Ctrl-C behaves as in a terminal instead.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
