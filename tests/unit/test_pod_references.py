"""API pods that reference ConfigMaps, Secrets and their ServiceAccount token, over the fake
runtime and the in-process test API server (with its ServiceAccount admission on)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.kubelet import volumes
from nodeagent.kubelet.projection import write_atomic
from nodeagent.model.pod import HostPathSource, Pod, PodUID
from tests.apiserver import ApiServer
from tests.apiserver.resources import CONFIGMAPS, PODS, SECRETS
from tests.apiserver.subresources import patch_ephemeral
from tests.unit.linkrig import Rig, events_of, pod_body, ready
from tests.unit.rig import IMAGE, eventually

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
MERGE = "application/merge-patch+json"
SMP = "application/strategic-merge-patch+json"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiServer]:
    async with ApiServer(state_dir=tmp_path / "api", bookmark_interval=0.2) as server:
        yield server


@pytest.fixture
async def rig(tmp_path: Path, api: ApiServer) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path, api)
    rig.link.refs._refresh_s = 0.2
    await rig.start()
    try:
        yield rig
    finally:
        await rig.close()
        for pod_dir in (tmp_path / "state" / "pods").glob("*"):
            await volumes.cleanup(tmp_path / "state", pod_dir.name)  # tmpfs mounts


def running_pod(rig: Rig, uid: str) -> Pod:
    worker = rig.manager.worker_for(PodUID(uid))
    assert worker is not None
    return worker.pod


def volume_path(pod: Pod, name: str) -> Path:
    volume = next(v for v in pod.spec.volumes if v.name.startswith(name))
    assert isinstance(volume.source, HostPathSource)
    return Path(volume.source.path)


def env_of(rig: Rig, uid: str) -> dict[str, str]:
    container = running_pod(rig, uid).spec.containers[0]
    return {e.name: e.value for e in container.env}


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "data": data}


async def test_the_service_account_volume_holds_token_ca_and_namespace(
    rig: Rig, api: ApiServer
) -> None:
    uid = rig.create(pod_body("web"))["metadata"]["uid"]
    await eventually(lambda: ready(rig, "web"), what="Ready")
    pod = running_pod(rig, uid)
    path = volume_path(pod, "kube-api-access-")
    token = (path / "token").read_text()
    assert api.tokens.authenticate(token) == "system:serviceaccount:default:default"
    assert (path / "ca.crt").read_text() == api.pki.ca_pem
    assert (path / "namespace").read_text() == "default"
    (mount,) = pod.spec.containers[0].volume_mounts
    assert mount.mount_path == SA_DIR and mount.read_only
    assert (path / "..data").is_symlink() and (path / "token").is_symlink()


async def test_env_from_config_maps_and_secrets(rig: Rig, api: ApiServer) -> None:
    api.store.create(CONFIGMAPS, "default", config_map("cfg", {"MODE": "fast", "bad key": "x"}))
    api.store.create(
        SECRETS, "default", {"metadata": {"name": "sec"}, "stringData": {"PASSWORD": "p$(x)"}}
    )
    body = pod_body("web")
    body["spec"]["automountServiceAccountToken"] = False
    body["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "cfg"}, "prefix": "C_"}]
    body["spec"]["containers"][0]["env"] = [
        {"name": "C_MODE", "value": "mine"},
        {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "PASSWORD"}}},
        {
            "name": "OPT",
            "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k", "optional": True}},
        },
    ]
    uid = rig.create(body)["metadata"]["uid"]
    await eventually(lambda: ready(rig, "web"), what="Ready")
    env = env_of(rig, uid)
    assert env == {"C_MODE": "mine", "PW": "p$$(x)"}  # literal: no $(VAR) expansion


async def test_a_missing_config_map_holds_the_pod_until_it_exists(rig: Rig, api: ApiServer) -> None:
    body = pod_body("web")
    body["spec"]["automountServiceAccountToken"] = False
    body["spec"]["containers"][0]["env"] = [
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "x"}}}
    ]
    uid = rig.create(body)["metadata"]["uid"]

    def waiting_reason() -> str:
        statuses = rig.api_status("web").get("containerStatuses") or [{}]
        return str(statuses[0].get("state", {}).get("waiting", {}).get("reason", ""))

    await eventually(lambda: waiting_reason() == "CreateContainerConfigError", what="the reason")
    assert rig.api_status("web")["phase"] == "Pending"
    assert "later" in rig.api_status("web")["containerStatuses"][0]["state"]["waiting"]["message"]
    assert rig.manager.worker_for(PodUID(uid)) is None
    api.store.create(CONFIGMAPS, "default", config_map("later", {"x": "1"}))
    await eventually(lambda: ready(rig, "web"), within=10, what="Ready once it exists")
    assert env_of(rig, uid) == {"X": "1"}


async def test_config_map_and_secret_volumes_follow_their_sources(rig: Rig, api: ApiServer) -> None:
    api.store.create(CONFIGMAPS, "default", config_map("cfg", {"a.conf": "one", "b.conf": "b"}))
    secret = base64.b64encode(b"s3cret").decode()
    api.store.create(SECRETS, "default", {"metadata": {"name": "sec"}, "data": {"key": secret}})
    body = pod_body("web")
    body["spec"]["automountServiceAccountToken"] = False
    body["spec"]["volumes"] = [
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {
            "name": "sec",
            "secret": {
                "secretName": "sec",
                "defaultMode": 0o400,
                "items": [{"key": "key", "path": "dir/key"}],
            },
        },
    ]
    body["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "cfg", "mountPath": "/etc/cfg"},
        {"name": "sec", "mountPath": "/etc/sec"},
    ]
    uid = rig.create(body)["metadata"]["uid"]
    await eventually(lambda: ready(rig, "web"), what="Ready")
    pod = running_pod(rig, uid)
    cfg, sec = volume_path(pod, "cfg"), volume_path(pod, "sec")
    assert (cfg / "a.conf").read_text() == "one"
    assert (sec / "dir" / "key").read_bytes() == b"s3cret"
    assert (sec / "dir" / "key").stat().st_mode & 0o777 == 0o400
    assert all(m.read_only for m in pod.spec.containers[0].volume_mounts)
    api.store.update(CONFIGMAPS, "default", "cfg", config_map("cfg", {"a.conf": "two"}))
    await eventually(lambda: (cfg / "a.conf").read_text() == "two", what="the new content")
    assert not (cfg / "b.conf").exists()  # a removed key goes
    assert rig.manager.worker_for(PodUID(uid)) is not None  # updated in place, no restart


def test_atomic_writes_swap_the_whole_set(tmp_path: Path) -> None:
    assert write_atomic(tmp_path, {"a": (b"1", 0o644), "d/b": (b"2", 0o600)})
    first = (tmp_path / "..data").resolve()
    assert not write_atomic(tmp_path, {"a": (b"1", 0o644), "d/b": (b"2", 0o600)})
    assert write_atomic(tmp_path, {"a": (b"3", 0o644)})
    assert (tmp_path / "a").read_text() == "3"
    assert not (tmp_path / "d").exists() and not first.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("..")) == ["a"]


async def test_labels_reach_a_downward_api_volume(rig: Rig, api: ApiServer) -> None:
    body = pod_body("web", labels={"app": "web"})
    body["spec"]["automountServiceAccountToken"] = False
    body["spec"]["volumes"] = [
        {
            "name": "info",
            "downwardAPI": {
                "items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                    {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}},
                ]
            },
        }
    ]
    uid = rig.create(body)["metadata"]["uid"]
    await eventually(lambda: ready(rig, "web"), what="Ready")
    info = volume_path(running_pod(rig, uid), "info")
    assert (info / "labels").read_text() == 'app="web"'
    assert (info / "name").read_text() == "web"
    api.store.patch(
        PODS,
        "default",
        "web",
        "application/merge-patch+json",
        {"metadata": {"labels": {"app": "web", "v": "2"}}},
    )
    await eventually(
        lambda: (info / "labels").read_text() == 'app="web"\nv="2"', what="the new labels"
    )


async def test_a_pod_with_a_token_volume_follows_spec_updates(rig: Rig, api: ApiServer) -> None:
    # ServiceAccount admission gives the pod a projected token volume: the pod is rewritten
    # before it runs, and that rewritten spec used to be kept whatever the API said later.
    api.store.create(CONFIGMAPS, "default", config_map("cfg", {"x": "one"}))
    body = pod_body("web")
    body["spec"]["containers"][0]["env"] = [
        {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "x"}}}
    ]
    uid = rig.create(body)["metadata"]["uid"]
    await eventually(lambda: ready(rig, "web"), what="Ready")
    assert volume_path(running_pod(rig, uid), "kube-api-access-").is_dir()
    (first,) = rig.running_containers(uid)
    sandboxes = rig.fake.count("run_sandbox")
    # A ConfigMap change alone restarts nothing, and the running spec's env holds.
    api.store.patch(CONFIGMAPS, "default", "cfg", MERGE, {"data": {"x": "two"}})
    rig.fake.images.add("busybox:1.37")
    image = {"spec": {"containers": [{"name": "app", "image": "busybox:1.37"}]}}
    api.store.patch(PODS, "default", "web", SMP, image)

    def restarted() -> bool:
        statuses = rig.api_status("web").get("containerStatuses") or [{}]
        first = statuses[0]
        return (first.get("image"), first.get("restartCount")) == ("busybox:1.37", 1)

    await eventually(restarted, what="the new image running")
    assert running_pod(rig, uid).spec.containers[0].image == "busybox:1.37"
    assert env_of(rig, uid) == {"X": "one"}  # as prepared: the running spec's env is stable
    (second,) = rig.running_containers(uid)
    assert second != first and rig.fake.count("run_sandbox") == sandboxes

    def killing() -> list[str]:
        events = events_of(api, "web")
        return [e["message"] for e in events if e["reason"] == "Killing"]

    (told,) = await eventually(killing, what=f"the Killing event: {events_of(api, 'web')}")
    assert told == "Container app definition changed, will be restarted"

    debugger = {"name": "debugger", "image": IMAGE, "imagePullPolicy": "IfNotPresent"}
    patch_ephemeral(api.store, "default", "web", SMP, {"spec": {"ephemeralContainers": [debugger]}})

    def debugger_running() -> bool:
        statuses = rig.api_status("web").get("ephemeralContainerStatuses") or [{}]
        return "running" in (statuses[0].get("state") or {})

    await eventually(debugger_running, what="the ephemeral container running")
    (status,) = rig.api_status("web")["ephemeralContainerStatuses"]
    assert status["name"] == "debugger" and status["ready"] is False
    assert rig.running_containers(uid) == [second]  # the app untouched
    assert rig.fake.count("run_sandbox") == sandboxes
