"""The fuzz suites' server: tests/support/parley_server.py, one per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.parley_server import FuzzServer, running_server


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[FuzzServer]:
    """A server requiring API keys (PARLEY_REQUIRE_AUTH=1), as production runs."""
    with running_server() as server:
        yield server
