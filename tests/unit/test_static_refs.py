"""Standalone ConfigMaps, Secrets and downwardAPI volumes: the manifest directory's objects
resolved into pods (nodeagent.sources.file + nodeagent.kubelet.staticrefs)."""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodeagent.kubelet import volumes
from nodeagent.kubelet.staticrefs import StaticReferences
from nodeagent.model.pod import HostPathSource, Pod
from nodeagent.sources.file import DesiredState, merge, read_file

CONFIG_MAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: game}
data:
  player.lives: "3"
  ui.properties: "color=good\\n"
"""

SECRET = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
data:
  password: {base64.b64encode(b"s3cr3t").decode()}
stringData:
  user: admin
"""

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: app
  labels: {app: demo, tier: "front"}
  annotations: {build: "two words"}
spec:
  containers:
    - name: main
      image: busybox:1.36
      resources: {limits: {memory: 64Mi, cpu: 250m}}
      env:
        - name: LIVES
          valueFrom: {configMapKeyRef: {name: game, key: player.lives}}
        - name: PASS
          valueFrom: {secretKeyRef: {name: creds, key: password}}
      envFrom:
        - configMapRef: {name: game}
          prefix: CM_
      volumeMounts:
        - {name: config, mountPath: /config}
        - {name: secret, mountPath: /secret}
        - {name: info, mountPath: /info}
  volumes:
    - name: config
      configMap:
        name: game
        items: [{key: ui.properties, path: ui/props}]
    - name: secret
      secret: {secretName: creds, defaultMode: 0400}
    - name: info
      downwardAPI:
        items:
          - {path: labels, fieldRef: {fieldPath: metadata.labels}}
          - {path: annotations, fieldRef: {fieldPath: metadata.annotations}}
          - {path: name, fieldRef: {fieldPath: metadata.name}, mode: 0600}
          - {path: mem, resourceFieldRef: {containerName: main, resource: limits.memory,
             divisor: 1Mi}}
          - {path: cpu, resourceFieldRef: {containerName: main, resource: limits.cpu,
             divisor: 1m}}
"""


def state_of(tmp_path: Path, **files: str) -> DesiredState:
    results = {}
    for name, text in files.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        results[str(path)] = read_file(path, node_name="node-1")
    return merge(results)


@pytest.fixture
async def refs(tmp_path: Path) -> AsyncIterator[StaticReferences]:
    state_dir = tmp_path / "state"
    yield StaticReferences(state_dir)
    for pod_dir in (state_dir / "pods").glob("*"):
        await volumes.cleanup(state_dir, pod_dir.name)  # tmpfs mounts


def volume(pod: Pod, name: str) -> Path:
    source = next(v.source for v in pod.spec.volumes if v.name == name)
    assert isinstance(source, HostPathSource)
    return Path(source.path)


async def test_pod_with_configmap_secret_and_downward_api_resolves(
    tmp_path: Path, refs: StaticReferences
) -> None:
    state = state_of(tmp_path, cm=CONFIG_MAP, secret=SECRET, pod=POD)
    assert state.errors == ()
    assert list(state.templates) == ["default/app"] and not state.pods
    result = await refs.resolve(state.templates, state.config_maps, state.secrets)
    assert not result.held
    pod = result.pods["default/app"]
    assert pod.uid == state.templates["default/app"].shape.uid
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env == {
        "CM_player.lives": "3",
        "CM_ui.properties": "color=good\n",
        "LIVES": "3",
        "PASS": "s3cr3t",
    }
    assert all(m.read_only for m in pod.spec.containers[0].volume_mounts)
    config = volume(pod, "config")
    assert (config / "ui" / "props").read_text() == "color=good\n"
    assert os.readlink(config / "ui") == "..data/ui"
    assert sorted(p.name for p in config.iterdir() if not p.name.startswith("..")) == ["ui"]
    secret = volume(pod, "secret")
    assert (secret / "password").read_bytes() == b"s3cr3t"
    assert (secret / "user").read_bytes() == b"admin"
    assert (secret / "password").stat().st_mode & 0o777 == 0o400
    assert secret.is_mount()
    info = volume(pod, "info")
    assert (info / "labels").read_text() == 'app="demo"\ntier="front"'
    assert (info / "annotations").read_text() == (
        'build="two words"\n'
        f'kubernetes.io/config.hash="{pod.uid}"\n'
        'kubernetes.io/config.source="file"'
    )
    assert (info / "name").read_text() == "app"
    assert (info / "name").stat().st_mode & 0o777 == 0o600
    assert (info / "mem").read_text() == "64"
    assert (info / "cpu").read_text() == "250"


async def test_missing_configmap_holds_the_pod_until_it_appears(
    tmp_path: Path, refs: StaticReferences
) -> None:
    state = state_of(tmp_path, secret=SECRET, pod=POD)
    result = await refs.resolve(state.templates, state.config_maps, state.secrets)
    assert not result.pods
    held = result.held["default/app"]
    # The kubelet mounts volumes before it resolves env: a volume names the object first.
    assert held.reason == "ContainerCreating"
    assert held.message == 'MountVolume.SetUp failed: configmap "game" not found'
    status = held.status(0.0)
    assert status["phase"] == "Pending"
    assert held.since is not None and "startTime" in status  # the age of its wait
    waiting = status["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "ContainerCreating", "message": held.message}

    state = state_of(tmp_path, cm=CONFIG_MAP, secret=SECRET, pod=POD)
    result = await refs.resolve(state.templates, state.config_maps, state.secrets)
    assert not result.held and "default/app" in result.pods


async def test_env_only_reference_is_create_container_config_error(
    tmp_path: Path, refs: StaticReferences
) -> None:
    pod = """\
apiVersion: v1
kind: Pod
metadata: {name: envonly}
spec:
  containers:
    - name: main
      image: busybox:1.36
      env: [{name: X, valueFrom: {configMapKeyRef: {name: absent, key: k}}}]
"""
    state = state_of(tmp_path, pod=pod)
    result = await refs.resolve(state.templates, state.config_maps, state.secrets)
    held = result.held["default/envonly"]
    assert (held.reason, held.message) == (
        "CreateContainerConfigError",
        'configmap "absent" not found',
    )


async def test_configmap_edit_updates_files_but_not_the_pod(
    tmp_path: Path, refs: StaticReferences
) -> None:
    state = state_of(tmp_path, cm=CONFIG_MAP, secret=SECRET, pod=POD)
    first = (await refs.resolve(state.templates, state.config_maps, state.secrets)).pods
    edited = CONFIG_MAP.replace('"3"', '"4"').replace("color=good", "color=bad")
    state = state_of(tmp_path, cm=edited, secret=SECRET, pod=POD)
    second = (await refs.resolve(state.templates, state.config_maps, state.secrets)).pods
    assert second == first  # env frozen: no restart
    props = volume(second["default/app"], "config") / "ui" / "props"
    assert props.read_text() == "color=bad\n"


async def test_removed_held_pod_leaves_no_files(tmp_path: Path, refs: StaticReferences) -> None:
    pod = POD.replace("configMapKeyRef: {name: game", "configMapKeyRef: {name: gone")
    state = state_of(tmp_path, cm=CONFIG_MAP, secret=SECRET, pod=pod)
    result = await refs.resolve(state.templates, state.config_maps, state.secrets)
    assert result.held["default/app"].reason == "CreateContainerConfigError"
    uid = result.held["default/app"].pod.uid
    assert (tmp_path / "state" / "pods" / uid).exists()  # the secret volume was written
    await refs.resolve({}, {}, {})
    assert not (tmp_path / "state" / "pods" / uid).exists()
    assert not refs.active


def test_bad_config_objects_and_references_are_named(tmp_path: Path) -> None:
    bad_secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {k: '!!notb64'}\n"
    token_pod = """\
apiVersion: v1
kind: Pod
metadata: {name: tok}
spec:
  containers: [{name: c, image: busybox:1.36}]
  volumes:
    - name: t
      projected:
        sources:
          - serviceAccountToken: {path: token}
          - configMap: {name: x, items: [{key: a, path: ../escape}]}
"""
    state = state_of(tmp_path, secret=bad_secret, pod=token_pod)
    found = {(e.object, e.field) for e in state.errors}
    assert found == {
        ("Secret default/s", "data.k"),
        ("Pod default/tok", "spec.volumes[0].projected.sources[0].serviceAccountToken"),
        ("Pod default/tok", "spec.volumes[0].projected.sources[1].configMap.items[0].path"),
    }
    assert all("!!notb64" not in e.message for e in state.errors)
    assert not state.templates and not state.secrets


def test_duplicate_configmap_is_an_error_of_the_later_file(tmp_path: Path) -> None:
    state = state_of(tmp_path, a=CONFIG_MAP, b=CONFIG_MAP)
    assert list(state.config_maps) == ["default/game"]
    (error,) = state.errors
    assert error.source.endswith("b.yaml") and error.object == "ConfigMap default/game"


def test_downward_api_items_are_checked_by_field(tmp_path: Path) -> None:
    pod = """\
apiVersion: v1
kind: Pod
metadata: {name: dw}
spec:
  containers: [{name: c, image: busybox:1.36}]
  volumes:
    - name: v
      downwardAPI:
        items:
          - {path: ip, fieldRef: {fieldPath: status.podIP}}
          - {path: mem, resourceFieldRef: {containerName: other, resource: limits.memory}}
    - name: p
      projected:
        sources: [{clusterTrustBundle: {name: x, path: ca}}]
"""
    state = state_of(tmp_path, pod=pod)
    assert {(e.field, e.message.split(" (")[0]) for e in state.errors} == {
        (
            "spec.volumes[0].downwardAPI.items[0].fieldRef.fieldPath",
            "unsupported fieldPath 'status.podIP' in a volume",
        ),
        (
            "spec.volumes[0].downwardAPI.items[1].resourceFieldRef.containerName",
            "must name a container of the pod",
        ),
        (
            "spec.volumes[1].projected.sources[0]",
            "exactly one of configMap, secret, downwardAPI, serviceAccountToken is required",
        ),
    }


async def test_container_env_is_resolved_again_from_the_directory(
    tmp_path: Path, refs: StaticReferences
) -> None:
    state = state_of(tmp_path, cm=CONFIG_MAP, secret=SECRET, pod=POD)
    pod = (await refs.resolve(state.templates, state.config_maps, state.secrets)).pods[
        "default/app"
    ]
    edited = CONFIG_MAP.replace('"3"', '"4"')
    state = state_of(tmp_path, cm=edited, secret=SECRET, pod=POD)
    assert (await refs.resolve(state.templates, state.config_maps, state.secrets)).pods[
        "default/app"
    ] == pod  # the pod stays: nothing is replaced
    env = await refs.container_env(pod, "main")
    assert env is not None
    assert {e.name: e.value for e in env}["LIVES"] == "4"  # what a new container gets

    (tmp_path / "cm.yaml").unlink()  # the ConfigMap leaves the directory
    files = [tmp_path / "secret.yaml", tmp_path / "pod.yaml"]
    state = merge({str(f): read_file(f, node_name="node-1") for f in files})
    await refs.resolve(state.templates, state.config_maps, state.secrets)
    with pytest.raises(ValueError, match='configmap "game" not found'):
        await refs.container_env(pod, "main")
    assert await refs.container_env(pod, "no-such-container") is None


async def test_close_stops_a_resolution_under_way(tmp_path: Path) -> None:
    refs = StaticReferences(tmp_path / "state")
    state = state_of(tmp_path, cm=CONFIG_MAP, pod=POD.replace("secretName: creds", "secretName: x"))
    handed: list[object] = []
    refs.submit(state.templates, state.config_maps, state.secrets, handed.append)
    await refs.close()
    assert not handed  # cancelled before it could hand anything over
    await refs.close()  # idempotent
    for pod_dir in (tmp_path / "state" / "pods").glob("*"):
        await volumes.cleanup(tmp_path / "state", pod_dir.name)


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("spec", "volumes", 0, "configMap"), 5, "spec.volumes[0].configMap"),
        (("spec", "volumes", 0, "configMap", "items"), "x", "spec.volumes[0].configMap.items"),
        (
            ("spec", "volumes", 1, "secret", "defaultMode"),
            "0400",
            "spec.volumes[1].secret.defaultMode",
        ),
        (
            ("spec", "volumes", 2, "downwardAPI", "items", 0, "fieldRef"),
            [],
            "spec.volumes[2].downwardAPI.items[0].fieldRef",
        ),
        (("spec", "containers", 0, "name"), {"a": 1}, "spec.containers[0].name"),
        (
            ("spec", "containers", 0, "env", 0, "valueFrom", "configMapKeyRef", "key"),
            7,
            "spec.containers[0].env[0].valueFrom.configMapKeyRef.key",
        ),
        (("metadata",), 5, "metadata"),
    ],
)
def test_malformed_reference_fields_are_named_not_raised(
    tmp_path: Path, path: tuple[Any, ...], value: Any, field: str
) -> None:
    doc = yaml.safe_load(POD)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    state = state_of(tmp_path, pod=yaml.safe_dump(doc))
    assert field in {e.field for e in state.errors}
    assert not state.templates and not state.pods
