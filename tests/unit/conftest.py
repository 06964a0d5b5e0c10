"""Fixtures for the unit tests.

- ``rig`` (function): a started ``WorkerRig`` (tests/unit/rig.py): the kubelet's parts over a
  FakeRuntime, closed after the test. The cluster link's tests define their own ``rig``.
- ``agent`` (function): a status server on a socket (its path is the value) serving the
  module's ``snapshot`` fixture, for the CLI's tests (``run_cli`` in rig.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.server.status import StatusServer
from tests.unit.rig import WorkerRig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[WorkerRig]:
    rig = WorkerRig(tmp_path)
    await rig.start()
    try:
        yield rig
    finally:
        await rig.close()


@pytest.fixture
async def agent(tmp_path: Path, snapshot: dict[str, Any]) -> AsyncIterator[Path]:
    path = tmp_path / "status.sock"
    server = StatusServer(str(path), lambda: snapshot)
    await server.start()
    yield path
    await server.close()
