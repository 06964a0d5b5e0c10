"""Fixtures for the unit tests.

- ``rig`` (function): a started ``WorkerRig`` (tests/unit/rig.py): the kubelet's parts over a
  FakeRuntime, closed after the test. The cluster link's tests define their own ``rig``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.unit.rig import WorkerRig


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[WorkerRig]:
    rig = WorkerRig(tmp_path)
    await rig.start()
    try:
        yield rig
    finally:
        await rig.close()
