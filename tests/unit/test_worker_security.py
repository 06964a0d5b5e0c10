"""The pod worker's security glue over the fake runtime: the privilege policy's refusal,
runAsNonRoot against the image user, the security settings reaching the runtime, and
termination messages read back into the status."""

from __future__ import annotations

from pathlib import Path

from nodeagent.kubelet import specs, volumes
from nodeagent.runtime.base import ContainerState
from tests.unit.rig import IMAGE, WorkerRig, eventually, make_pod


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


async def test_a_privileged_pod_is_refused_and_nothing_starts(rig: WorkerRig) -> None:
    pod = make_pod("priv", extra={"securityContext": {"privileged": True}})
    rig.run(pod)
    status = await eventually(
        lambda: rig.status(pod) if rig.status(pod).get("reason") == "Forbidden" else None,
        what="Forbidden",
    )
    assert "spec.containers[0].securityContext.privileged" in status["message"]
    assert status["phase"] == "Pending"
    assert rig.waiting_reason(pod) == "Blocked"
    assert rig.fake.count("run_sandbox") == 0 and rig.fake.count("create_container") == 0


async def test_run_as_non_root_checks_the_image_user(rig: WorkerRig) -> None:
    pod = make_pod("nonroot", extra={"securityContext": {"runAsNonRoot": True}})
    rig.run(pod)
    await eventually(
        lambda: rig.waiting_reason(pod) == "CreateContainerConfigError", what="config error"
    )
    assert "image will run as root" in rig.container(pod)["state"]["waiting"]["message"]
    assert rig.fake.count("create_container") == 0
    rig.fake.image_users[IMAGE] = "1000"
    other = make_pod("nonroot-ok", extra={"securityContext": {"runAsNonRoot": True}})
    rig.run(other)
    await eventually(lambda: rig.running(other), what="running as 1000")


async def test_security_settings_reach_the_runtime(rig: WorkerRig) -> None:
    pod = make_pod(
        "secure",
        extra={"securityContext": {"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}}},
    )
    rig.run(pod)
    await eventually(lambda: rig.running(pod), what="running")
    (created,) = rig.fake.containers.values()
    security = created.config.security
    assert security.run_as_user == 1000 and security.capabilities_drop == ("ALL",)
    assert security.seccomp == "Unconfined"


async def test_the_termination_message_is_read_when_the_container_exits(rig: WorkerRig) -> None:
    pod = make_pod("msg", policy="Never")
    rig.run(pod)
    await eventually(lambda: rig.running(pod), what="running")
    (cid,) = rig.fake.container_ids("app", state=ContainerState.RUNNING)
    pod_dir = str(volumes.pod_dir(rig.state_dir, pod))
    write(specs.termination_log_path(pod_dir, "app", 0), "all done")
    rig.fake.exit_container(cid, 0)

    def message() -> str:
        return str(rig.container(pod)["state"].get("terminated", {}).get("message", ""))

    assert await eventually(message, what="the message") == "all done"
