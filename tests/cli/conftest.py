"""Fixtures of the CLI tests: the app run in this process, and the toy approximate backend registered."""

from __future__ import annotations

from typing import Any

import pytest
from typer.testing import CliRunner

from rechub_serving.cli import app
from rechub_serving.testing import registered_plugin
from tests.cli._support import ToyBackend


@pytest.fixture()
def toy_backend():
    """The ``approx`` backend registered for the test (in this process: use CliRunner)."""
    with registered_plugin(ToyBackend, name="toy-approx"):
        yield ToyBackend


@pytest.fixture()
def cli():
    """Run the app in this process: ``cli("build", ...)`` -> click Result (stdout and stderr apart)."""
    runner = CliRunner()

    def invoke(*args: Any):
        return runner.invoke(app, [str(a) for a in args])

    return invoke
