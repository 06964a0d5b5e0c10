"""The manifest directory's pods that reference its ConfigMaps and Secrets (standalone mode).

The file source hands over such pods as templates (the manifest, and its validated shape).
``StaticReferences.resolve`` turns each into the pod to run, with the same pure resolution
as API pods (``refs.rewrite``, ``refs.files_for``) and the same writer
(``projection.write_volumes``), against the directory's own ConfigMaps and Secrets:

- a template whose references all resolve gets its volume files written, then becomes a
  ``Pod`` for the pod manager. That pod is kept per uid, so an edited ConfigMap never
  replaces it; its volume files follow every later change of their sources, and a
  container's env is resolved again each time the container is created
  (``container_env``, the worker's env source), as the kubelet resolves env;
- one that does not resolve is ``Held``, with the kubelet's reason: ``ContainerCreating``
  ("MountVolume.SetUp failed: configmap "x" not found") for a volume, as the kubelet
  checks mounts first, or ``CreateContainerConfigError`` for env. It runs nothing; the
  status shows it Pending with that reason until the object appears in the directory.

Secret values never reach a log line: errors name objects and keys only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from nodeagent.kubelet import volumes
from nodeagent.kubelet.podstatus import StatusInput, Waiting, compute_status
from nodeagent.kubelet.projection import write_volumes
from nodeagent.kubelet.runtimepod import RuntimePod
from nodeagent.model.configobjects import ConfigObject, lookup_in
from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import EnvVar, Pod, PodUID
from nodeagent.model.refs import CONFIG_ERROR, MOUNT_ERROR, RefError, env_refers
from nodeagent.model.refs import rewrite as rewrite_refs
from nodeagent.model.validate import parse_pod

log = structlog.get_logger("nodeagent.kubelet.staticrefs")

Obj = dict[str, Any]


class Template(Protocol):
    """``sources.file.PodTemplate`` as seen from here."""

    @property
    def shape(self) -> Pod: ...

    @property
    def doc(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Held:
    """A pod that cannot start yet, and why (its containers' waiting reason)."""

    pod: Pod
    reason: str
    message: str
    since: float | None = None  # when this node first saw it: its startTime, as upstream

    def status(self, now: float) -> dict[str, Any]:
        """Its PodStatus: Pending, every container waiting with the reason."""
        waiting = Waiting(self.reason, self.message)
        return compute_status(
            StatusInput(
                pod=self.pod,
                runtime=RuntimePod(self.pod.uid),
                now=now,
                waiting={c.name: waiting for c in self.pod.all_containers()},
                start_time=self.since,
            )
        )


@dataclass(frozen=True)
class Resolution:
    pods: Mapping[str, Pod] = field(default_factory=dict)  # by namespace/name
    held: Mapping[str, Held] = field(default_factory=dict)


class StaticReferences:
    """Resolves templates; keeps each resolved pod (by uid) and its files current."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._ready: dict[PodUID, Pod] = {}
        self._why: dict[PodUID, str] = {}  # last reported hold, to log each change once
        self._held: set[PodUID] = set()  # volume files may exist, and no worker owns them
        self._seen: dict[PodUID, float] = {}  # when a held pod was first seen
        self.held: Mapping[str, Held] = {}  # as of the last resolution handed over
        self._next: tuple[Any, ...] | None = None
        # As of the last resolution: templates by uid, and the directory's objects.
        self._templates: dict[PodUID, Template] = {}
        self._objects: tuple[Mapping[str, ConfigObject], Mapping[str, ConfigObject]] = ({}, {})
        self._task: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        """Whether it knows any pod (a resolve with no templates still has work: forget)."""
        return bool(self._ready or self._held)

    def submit(
        self,
        templates: Mapping[str, Template],
        config_maps: Mapping[str, ConfigObject],
        secrets: Mapping[str, ConfigObject],
        then: Callable[[Resolution], None],
    ) -> None:
        """Resolve in a task, one at a time, then call ``then``. A resolution overtaken by a
        newer submission is not handed over: the newer one follows."""
        self._next = (templates, config_maps, secrets, then)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="static-refs")

    async def close(self) -> None:
        """Agent shutdown: stop a resolution under way (the pods keep running)."""
        self._next = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _drain(self) -> None:
        while self._next is not None:
            templates, config_maps, secrets, then = self._next
            self._next = None
            try:
                resolution = await self.resolve(templates, config_maps, secrets)
            except Exception:  # one bad round must not stop later ones
                log.exception("pod_references_crashed")
                continue
            if self._next is None:
                self.held = resolution.held
                then(resolution)

    async def resolve(
        self,
        templates: Mapping[str, Template],
        config_maps: Mapping[str, ConfigObject],
        secrets: Mapping[str, ConfigObject],
    ) -> Resolution:
        pods: dict[str, Pod] = {}
        held: dict[str, Held] = {}
        self._templates = {t.shape.uid: t for t in templates.values()}
        self._objects = (config_maps, secrets)
        for key, template in templates.items():
            shape = template.shape
            lookup = lookup_in(shape.namespace, config_maps, secrets)
            pod_dir = str(self.state_dir / "pods" / shape.uid)
            try:
                changed = await write_volumes(pod_dir, template.doc, lookup)
                pod = self._ready.get(shape.uid) or _parse(
                    rewrite_refs(template.doc, pod_dir=pod_dir, lookup=lookup), shape
                )
            except RefError as exc:
                if shape.uid in self._ready:  # keep the last good files, as the kubelet does
                    pods[key] = self._ready[shape.uid]
                    self._report(shape, "pod_references_refresh_failed", exc.message)
                else:
                    self._held.add(shape.uid)
                    since = self._seen.setdefault(shape.uid, time.time())
                    held[key] = Held(shape, exc.reason, exc.message, since)
                    self._report(shape, "pod_references_missing", exc.message)
                continue
            except OSError as exc:
                if shape.uid in self._ready:
                    pods[key] = self._ready[shape.uid]
                    self._report(shape, "pod_volumes_refresh_failed", str(exc))
                    continue
                self._held.add(shape.uid)
                since = self._seen.setdefault(shape.uid, time.time())
                message = f"cannot write the pod's volumes: {exc}"
                held[key] = Held(shape, MOUNT_ERROR, message, since)
                self._report(shape, "pod_volumes_failed", str(exc))
                continue
            if shape.uid not in self._ready or self._why.pop(shape.uid, None) is not None:
                log.info("pod_references_ready", pod=shape.name, namespace=shape.namespace)
            for name in changed:
                log.debug("volume_written", pod=shape.name, namespace=shape.namespace, volume=name)
            self._ready[shape.uid] = pod
            self._held.discard(shape.uid)
            pods[key] = pod
        await self._forget({t.shape.uid for t in templates.values()})
        return Resolution(pods, held)

    async def _forget(self, live: set[PodUID]) -> None:
        """Drop what is known of templates gone from the directory. A running pod's files
        go with its worker; a held pod has none, so its files (tmpfs) are removed here."""
        for uid in set(self._ready) - live:
            del self._ready[uid]
        for uid in set(self._why) - live:
            del self._why[uid]
        for uid in set(self._seen) - live:
            del self._seen[uid]
        for uid in self._held - live:
            self._held.discard(uid)
            await volumes.cleanup(self.state_dir, uid)

    async def container_env(self, pod: Pod, container: str) -> tuple[EnvVar, ...] | None:
        """``container``'s env resolved against the directory as it is now; None when the
        spec's env is the one to use (the pod takes nothing from a ConfigMap or Secret).
        Raises ValueError with the kubelet's message when an object or key is missing."""
        template = self._templates.get(pod.uid)
        if template is None or not env_refers(template.doc, container):
            return None
        lookup = lookup_in(pod.namespace, *self._objects)
        pod_dir = str(self.state_dir / "pods" / pod.uid)
        try:
            fresh = _parse(rewrite_refs(template.doc, pod_dir=pod_dir, lookup=lookup), pod)
        except RefError as exc:
            raise ValueError(exc.message) from exc
        return next((c.env for c in fresh.all_containers() if c.name == container), None)

    def _report(self, pod: Pod, event: str, message: str) -> None:
        if self._why.get(pod.uid) != message:
            self._why[pod.uid] = message
            log.warning(event, pod=pod.name, namespace=pod.namespace, error=message)


def _parse(doc: Obj, shape: Pod) -> Pod:
    try:
        return parse_pod(doc, source=shape.source, node_name="")
    except ValidationError as exc:  # a resolved value the shape could not foresee
        raise RefError(CONFIG_ERROR, str(exc)) from exc


def held_statuses(held: Mapping[str, Held]) -> list[dict[str, Any]]:
    """Held pods as ``PodManager.snapshot`` lists pods."""
    now = time.time()
    return [
        {
            "metadata": {
                "name": h.pod.name,
                "namespace": h.pod.namespace,
                "uid": h.pod.uid,
                **({"labels": dict(h.pod.labels)} if h.pod.labels else {}),
                "annotations": dict(h.pod.annotations),
            },
            "status": h.status(now),
            "probes": [],
            "worker": "waiting",
        }
        for h in held.values()
    ]
