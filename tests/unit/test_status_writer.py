"""The pod status writer's pass: its patches go out concurrently, bounded, and a failure worth
retrying ends the pass (the HTTP side is covered by test_cluster_link's real API server)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from nodeagent.apiserver import statuswriter
from nodeagent.apiserver.client import ApiFailure
from nodeagent.apiserver.statuswriter import PodStatusWriter, Wanted


class Answer:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def to_dict(self) -> dict[str, Any]:
        return self.body


class Typed:
    """lightkube's typed client, as far as the writer uses it: patches that take a while."""

    def __init__(self, *, fail: int = 0) -> None:
        self.fail = fail  # the first ``fail`` patches answer 503
        self.in_flight = 0
        self.peak = 0
        self.names: list[str] = []

    async def patch(self, _resource: Any, name: str, body: Any, **_: Any) -> Answer:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(0.02)
            self.names.append(name)
            if len(self.names) <= self.fail:
                raise ApiFailure(503, "ServiceUnavailable", "busy")
            return Answer({**body, "metadata": {**body["metadata"], "resourceVersion": "2"}})
        finally:
            self.in_flight -= 1


class Client:
    def __init__(self, typed: Typed) -> None:
        self.typed = typed


def wanted(count: int) -> dict[str, Wanted]:
    pods = {}
    for i in range(count):
        observed = {"metadata": {"name": f"p{i}", "uid": f"u{i}", "resourceVersion": "1"}}
        pods[f"u{i}"] = Wanted("default", f"p{i}", f"u{i}", {"phase": "Running"}, observed)
    return pods


async def test_a_pass_sends_its_patches_concurrently_up_to_the_limit() -> None:
    typed = Typed()
    pods = wanted(20)
    writer = PodStatusWriter(Client(typed), wanted=lambda: pods)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await writer.write_all()
    # 20 patches of 20 ms each, 8 at a time: three rounds, not twenty.
    assert loop.time() - started < 0.2
    assert typed.peak == statuswriter.MAX_IN_FLIGHT
    assert sorted(typed.names) == sorted(f"p{i}" for i in range(20))
    assert writer.patches == 20
    await writer.write_all()  # the API shows every status now: nothing more to send
    assert writer.patches == 20


async def test_a_failure_worth_retrying_ends_the_pass_and_is_raised() -> None:
    typed = Typed(fail=1)
    pods = wanted(20)
    writer = PodStatusWriter(Client(typed), wanted=lambda: pods)  # type: ignore[arg-type]
    with pytest.raises(ApiFailure) as failed:
        await writer.write_all()
    assert failed.value.retryable
    # Those in flight finish; none starts after the failure.
    assert len(typed.names) == statuswriter.MAX_IN_FLIGHT
    await writer.write_all()  # the retry sends what the failed pass did not
    assert writer.patches == 20


async def test_a_pod_found_in_sync_is_compared_again_only_when_an_object_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[str] = []
    real = statuswriter.status_patch

    def counting(base: Any, new: Any) -> Any:
        compared.append(new["phase"])
        return real(base, new)

    monkeypatch.setattr(statuswriter, "status_patch", counting)
    typed = Typed()
    pods = wanted(3)
    writer = PodStatusWriter(Client(typed), wanted=lambda: pods)  # type: ignore[arg-type]
    await writer.write_all()
    await writer.write_all()  # each pod compared once more, and found in sync
    assert len(compared) == 6 and writer.patches == 3
    await writer.write_all()  # the same objects: nothing to compare
    assert len(compared) == 6
    # A new status (a worker's next publish) is compared again, and sent if it differs.
    pods["u1"] = Wanted("default", "p1", "u1", {"phase": "Running"}, pods["u1"].observed)
    pods["u2"] = Wanted("default", "p2", "u2", {"phase": "Failed"}, pods["u2"].observed)
    await writer.write_all()
    assert len(compared) == 8 and writer.patches == 4
    assert typed.names[-1] == "p2"
