"""Pod workers over the fake runtime: native sidecars start before the app and stop after it,
and a pod past its activeDeadlineSeconds is stopped for good."""

from __future__ import annotations

from typing import Any

from nodeagent.kubelet.worker import WorkerState
from nodeagent.model.pod import Pod
from nodeagent.model.validate import parse_pod
from nodeagent.runtime.base import ContainerState
from tests.unit.rig import IMAGE, NODE, WorkerRig, eventually


def sidecar_pod(**spec: Any) -> Pod:
    def container(name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "image": IMAGE, "command": ["sleep", "1000"], **extra}

    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {
            "terminationGracePeriodSeconds": 3,
            "initContainers": [
                container("proxy", restartPolicy="Always"),
                container("logger", restartPolicy="Always"),
            ],
            "containers": [container("app"), container("helper")],
            **spec,
        },
    }
    return parse_pod(doc, source="test", node_name=NODE)


async def test_sidecars_start_first_and_stop_last_in_reverse(rig: WorkerRig) -> None:
    pod = sidecar_pod()
    rig.run(pod)
    for name in ("proxy", "logger", "app", "helper"):
        await eventually(lambda: rig.running(pod, name), what=f"{name} running")  # noqa: B023
    created = [c[2] for c in rig.fake.calls if c[0] == "create_container"]
    assert created[:2] == ["proxy", "logger"] and set(created[2:]) == {"app", "helper"}
    assert rig.container(pod, "proxy")["ready"] is True

    # A sidecar that exits is restarted, whatever the pod's policy.
    (proxy,) = rig.fake.container_ids("proxy", uid=pod.uid, state=ContainerState.RUNNING)
    rig.fake.exit_container(proxy, 1)
    await eventually(lambda: rig.container(pod, "proxy").get("restartCount") == 1, what="restart")

    names: dict[str, str] = {c.id: c.config.name for c in rig.fake.containers.values()}
    worker = rig.manager.worker_for(pod.uid)
    assert worker is not None
    rig.run()
    await eventually(lambda: worker.state is WorkerState.TERMINATED, what="terminated")
    order = [names.get(call[1]) for call in rig.fake.calls if call[0] == "stop_container"]
    order = [n for n in order if n is not None]
    assert set(order[:2]) == {"app", "helper"}
    assert order[2:] == ["logger", "proxy"]


async def test_a_pod_past_its_deadline_is_stopped_and_failed(rig: WorkerRig) -> None:
    pod = sidecar_pod(activeDeadlineSeconds=1, restartPolicy="Always")
    rig.run(pod)
    await eventually(lambda: rig.running(pod, "app"), what="app running")

    def failed() -> bool:
        return rig.status(pod).get("reason") == "DeadlineExceeded"

    await eventually(failed, 10, what="DeadlineExceeded")
    await eventually(
        lambda: not rig.fake.container_ids(uid=pod.uid, state=ContainerState.RUNNING),
        what="everything stopped",
    )
    status = rig.status(pod)
    assert status["phase"] == "Failed"
    assert all(c["restartCount"] == 0 for c in status["containerStatuses"])
