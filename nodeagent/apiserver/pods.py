"""The API's pods for this node -> what the agent does with each (pure).

``read_pods`` sorts every pod the reflector holds (``spec.nodeName`` is this node's) into:

- ``run``: pods to run, by ``namespace/name`` like the manifest directory's;
- ``delete``: pods with a ``deletionTimestamp``: terminate them with their
  ``deletionGracePeriodSeconds``, then delete them for good (``cluster.py`` does both);
- ``reject``: pods the kubelet would refuse, to be marked ``Failed`` with a reason (a field
  nodeagent cannot honour, or an admission failure; see ``admission.py``). Pods are parsed
  leniently (``model.validate``): a field the API accepts fails a pod only when it asks for
  what this node cannot do (a Windows ``os``, ``hostUsers: false``, a RuntimeClass,
  ``resourceClaims``); a field newer than the API we track is ignored
  (``Pod.future_fields``, which the caller warns about once per pod). A pod's
  ``runtimeClassName`` is looked up in the API's RuntimeClasses (``RuntimeClasses``): a
  handler other than the default (runc) is refused naming the field; a RuntimeClass not
  found holds the pod (it may be created just after the pod, as upstream retries);
- nothing at all: mirror pods (the API's copies of our own static pods, see ``mirror.py``)
  and pods already in a terminal phase that do not run here. Upstream never restarts a pod
  the API shows Succeeded or Failed; one that still runs here (it just finished) stays, so
  its containers and logs stay until the pod is deleted.

``merge`` joins them with the manifest directory's pods into the pod manager's one desired
set. In cluster mode a static pod is named ``<name>-<node>``, as the kubelet names it, so
that two nodes' copies of one manifest get mirror pods of different names. An API pod wins a
name clash; the static pod is reported as an error of its file.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import Pod, PodSpec, PodUID
from nodeagent.model.refs import CONFIG_ERROR
from nodeagent.model.security import API_SOURCE
from nodeagent.model.service import Service
from nodeagent.model.validate import parse_pod
from nodeagent.sources.file import DesiredState, SourceError

Obj = dict[str, Any]

SOURCE = API_SOURCE
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
CONFIG_SOURCE_ANNOTATION = "kubernetes.io/config.source"
TERMINAL_PHASES = ("Succeeded", "Failed")
UNSUPPORTED_REASON = "UnsupportedPodSpec"
# The handlers this node runs: the runtime's default, which is runc for containerd and Docker.
DEFAULT_HANDLERS = ("", "runc")


@dataclass(frozen=True)
class Rejection:
    """Why a pod will not run here, as its status shows it (``reason``, ``message``)."""

    reason: str
    message: str


@dataclass(frozen=True)
class Hold:
    """Why a pod does not start yet (its ConfigMaps, Secrets or token are not ready):
    ``reason`` and ``message`` for its containers' waiting state; ``error`` False while the
    first attempt is still under way (nothing worth reporting yet)."""

    reason: str
    message: str
    error: bool = True


class Preparer(Protocol):
    """Resolves what a pod references (``podrefs.PodReferences``)."""

    def prepared(self, obj: Obj) -> Obj | None:
        """The document to run if it is ready; no side effects."""

    def prepare(self, obj: Obj) -> Obj | Hold:
        """The document to run, or why not yet; starts the work if need be."""


@dataclass(frozen=True)
class RuntimeClasses:
    """The API's RuntimeClasses, name -> handler; ``listed`` is False before the first list."""

    handlers: Mapping[str, str] = field(default_factory=dict)
    listed: bool = True

    @classmethod
    def read(cls, objects: Iterable[Obj], *, listed: bool) -> RuntimeClasses:
        return cls(
            {str(_meta(o).get("name")): str(o.get("handler") or "") for o in objects}, listed
        )


@dataclass(frozen=True)
class Deletion:
    pod: Pod
    grace_s: int


def shortened(
    started: Mapping[PodUID, int], deletions: Mapping[PodUID, Deletion]
) -> dict[PodUID, Deletion]:
    """The deletions under way (``started``: uid -> grace period they began with, or were
    last shortened to) whose pod the API now gives a shorter grace period: a second DELETE
    may only shorten it (kube-apiserver refuses to lengthen it), and the shorter one wins."""
    return {
        uid: deletion
        for uid, deletion in deletions.items()
        if uid in started and deletion.grace_s < started[uid]
    }


@dataclass(frozen=True)
class ApiPods:
    run: Mapping[str, Pod]
    delete: Mapping[PodUID, Deletion]
    reject: Mapping[PodUID, Rejection]
    objects: Mapping[PodUID, Obj]  # every non-mirror pod of this node, as the API has it
    errors: tuple[SourceError, ...] = ()
    hold: Mapping[PodUID, Hold] = field(default_factory=dict)

    @property
    def keys(self) -> set[str]:
        return {_key(obj) for obj in self.objects.values()}


# Asked about a pod not admitted yet: (pod, its API document, the pods admitted before it).
# A Hold: not decided yet (the node is being read again); the pod waits, asked again later.
Admit = Callable[[Pod, Obj, Sequence[Pod]], Rejection | Hold | None]


def is_mirror(obj: Obj) -> bool:
    return MIRROR_ANNOTATION in (_meta(obj).get("annotations") or {})


def read_pods(
    objects: Iterable[Obj],
    *,
    node_name: str,
    running: Callable[[PodUID], bool],
    admit: Admit | None = None,
    rejected: Mapping[PodUID, Rejection] | None = None,
    preparer: Preparer | None = None,
    cache: ParseCache | None = None,
    runtime_classes: RuntimeClasses | None = None,
) -> ApiPods:
    """Sort the API's pods (see the module docstring). ``running(uid)``: a worker has it.

    ``admit`` is asked, oldest pod first, about each pod that is not running yet, given the
    pods that run and those admitted before it; pods already running were admitted before
    and are never asked again, and ``rejected`` ones stay rejected, as upstream.
    """
    rejected = rejected or {}
    pending: list[tuple[PodUID, Pod, Obj]] = []
    hold: dict[PodUID, Hold] = {}
    run: dict[str, Pod] = {}
    delete: dict[PodUID, Deletion] = {}
    reject: dict[PodUID, Rejection] = {}
    by_uid: dict[PodUID, Obj] = {}
    errors: list[SourceError] = []
    for obj in sorted(objects, key=_age):
        meta = _meta(obj)
        uid = PodUID(str(meta.get("uid") or ""))
        if not uid or is_mirror(obj):
            continue
        by_uid[uid] = obj
        phase = (obj.get("status") or {}).get("phase")
        if meta.get("deletionTimestamp"):
            doc = preparer.prepared(obj) if preparer is not None else obj
            parsed = _parsed(cache, doc, node_name, doc is not obj) if doc is not None else []
            pod = parsed if isinstance(parsed, Pod) else None
            delete[uid] = Deletion(pod or _stand_in(uid, obj), _grace(obj, pod))
            continue
        if phase in TERMINAL_PHASES and not running(uid):
            continue
        ready = preparer.prepare(obj) if preparer is not None else obj
        if isinstance(ready, Hold):
            hold[uid] = ready
            continue
        parsed = _parsed(cache, ready, node_name, ready is not obj)
        pod = parsed if isinstance(parsed, Pod) else None
        if pod is None:
            problems = [] if isinstance(parsed, Pod) else parsed
            errors.extend(problems)
            if phase not in TERMINAL_PHASES:
                reject[uid] = Rejection(UNSUPPORTED_REASON, _describe(problems))
            continue
        fresh = not running(uid) and phase not in TERMINAL_PHASES and uid not in rejected
        verdict = runtime_class_verdict(pod, runtime_classes) if fresh else None
        if isinstance(verdict, Hold):
            hold[uid] = verdict
        elif verdict is not None:
            reject[uid] = verdict
        elif uid in rejected:
            reject[uid] = rejected[uid]
        elif admit is None or running(uid) or phase in TERMINAL_PHASES:
            run[pod.key] = pod
        else:
            pending.append((uid, pod, obj))
    if admit is not None:
        admitted = list(run.values())
        for uid, pod, obj in pending:
            refusal = admit(pod, obj, admitted)
            if isinstance(refusal, Hold):
                hold[uid] = refusal
            elif refusal is not None:
                reject[uid] = refusal
            else:
                run[pod.key] = pod
                admitted.append(pod)
    return ApiPods(run, delete, reject, by_uid, tuple(errors), hold)


def runtime_class_verdict(pod: Pod, classes: RuntimeClasses | None) -> Hold | Rejection | None:
    """Whether this node runs ``pod``'s RuntimeClass: None if it does (or names none)."""
    name = pod.spec.runtime_class_name
    if not name:
        return None
    classes = classes or RuntimeClasses()
    if not classes.listed:
        return Hold(CONFIG_ERROR, f'RuntimeClass "{name}" not listed yet', error=False)
    handler = classes.handlers.get(name)
    if handler is None:
        return Hold(CONFIG_ERROR, f'spec.runtimeClassName: RuntimeClass "{name}" not found')
    if handler in DEFAULT_HANDLERS:
        return None
    return Rejection(
        UNSUPPORTED_REASON,
        f'nodeagent cannot run this pod: spec.runtimeClassName: RuntimeClass "{name}" has '
        f'handler "{handler}"; this node runs only the default handler (runc)',
    )


def merge(
    files: DesiredState,
    api: ApiPods,
    *,
    node_name: str,
    services: Mapping[str, Service] | None = None,
    errors: Sequence[SourceError] = (),
) -> DesiredState:
    """The desired state: the API's pods and Services, the directory's renamed static pods
    and its Services (an API Service wins a name clash too)."""
    pods: dict[str, Pod] = dict(api.run)
    taken = api.keys
    errors = [*files.errors, *api.errors, *errors]
    all_services = dict(files.services)
    for key, service in (services or {}).items():
        if key in all_services:
            errors.append(
                SourceError(
                    all_services[key].source,
                    f"Service {key}",
                    "metadata.name",
                    "an API Service of that name exists; it wins",
                )
            )
        all_services[key] = service
    for pod in files.pods.values():
        static = static_pod(pod, node_name)
        if static.key in taken:
            errors.append(
                SourceError(
                    pod.source,
                    f"Pod {pod.key}",
                    "metadata.name",
                    f"an API pod named {static.key} runs on this node; the static pod waits",
                )
            )
            continue
        pods[static.key] = static
    return DesiredState(pods, all_services, tuple(errors))


def static_pod(pod: Pod, node_name: str) -> Pod:
    """A manifest's pod as the kubelet names it in cluster mode: ``<name>-<node>``."""
    suffix = f"-{node_name}"
    return pod if pod.name.endswith(suffix) else replace(pod, name=pod.name + suffix)


class ParseCache:
    """Parsed pods by (uid, resourceVersion, prepared): each version is parsed once, not on
    every event of every other pod (parsing 110 pods costs some 20 ms)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str, bool], Pod | list[SourceError]] = OrderedDict()

    def parse(self, doc: Obj, node_name: str, *, prepared: bool) -> Pod | list[SourceError]:
        meta = _meta(doc)
        key = (str(meta.get("uid") or ""), str(meta.get("resourceVersion") or ""), prepared)
        if not key[0] or not key[1]:
            return _parse(doc, node_name)
        found = self._items.get(key)
        if found is None:
            found = self._items[key] = _parse(doc, node_name)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return found


def _parsed(
    cache: ParseCache | None, doc: Obj, node_name: str, prepared: bool
) -> Pod | list[SourceError]:
    return cache.parse(doc, node_name, prepared=prepared) if cache else _parse(doc, node_name)


def _parse(obj: Obj, node_name: str) -> Pod | list[SourceError]:
    name = _key(obj)
    try:
        pod = parse_pod(obj, source=SOURCE, node_name=node_name, lenient=True)
    except ValidationError as exc:
        return [SourceError(SOURCE, f"Pod {name}", e.path, e.message) for e in exc.errors]
    except RecursionError:
        return [SourceError(SOURCE, f"Pod {name}", "", "document nested too deeply")]
    annotations = {**pod.annotations, CONFIG_SOURCE_ANNOTATION: SOURCE}
    return replace(pod, annotations=annotations)


def _describe(problems: list[SourceError]) -> str:
    parts = [f"{e.field}: {e.message}" if e.field else e.message for e in problems]
    return "nodeagent cannot run this pod: " + "; ".join(parts)


def _grace(obj: Obj, pod: Pod | None) -> int:
    grace = _meta(obj).get("deletionGracePeriodSeconds")
    if isinstance(grace, int) and not isinstance(grace, bool) and grace >= 0:
        return grace
    return pod.spec.termination_grace_period_seconds if pod is not None else 30


def _stand_in(uid: PodUID, obj: Obj) -> Pod:
    """A pod we could not parse but must stop: enough to find and remove what runs of it."""
    meta = _meta(obj)
    return Pod(
        uid=uid,
        name=str(meta.get("name") or ""),
        namespace=str(meta.get("namespace") or "default"),
        spec=PodSpec(containers=()),
        source=SOURCE,
    )


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _key(obj: Obj) -> str:
    meta = _meta(obj)
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


def _age(obj: Obj) -> tuple[str, str]:
    return (str(_meta(obj).get("creationTimestamp") or ""), _key(obj))


def terminal_status(status: Obj, *, now: str) -> Obj:
    """The final status of a deleted pod whose containers have all stopped, as the kubelet
    writes it before the final DELETE (getPhase with ``podIsTerminal``, Kubernetes 1.27+):
    ``Succeeded`` when every container exited 0, ``Failed`` otherwise; nothing is ready
    (conditions that turn False change at ``now``)."""
    final = dict(status)
    groups = [final.get("initContainerStatuses") or [], final.get("containerStatuses") or []]
    apps = groups[1]
    exits = [((c.get("state") or {}).get("terminated") or {}).get("exitCode") for c in apps]
    final["phase"] = "Succeeded" if apps and all(e == 0 for e in exits) else "Failed"
    for key, statuses in zip(("initContainerStatuses", "containerStatuses"), groups, strict=True):
        if statuses:
            final[key] = [_stopped(c) for c in statuses]
    final["conditions"] = [
        {**c, "status": "False", "lastTransitionTime": now}
        if c.get("type") in _READY_CONDITIONS and c.get("status") != "False"
        else c
        for c in final.get("conditions") or []
    ]
    return final


_READY_CONDITIONS = ("Ready", "ContainersReady", "PodReadyToStartContainers")


def _stopped(container: Obj) -> Obj:
    """A container of a terminated pod: never ready, and terminated even if its last state
    was not seen (one removed before it was observed exited counts as an error, as upstream's
    ContainerStatusUnknown)."""
    state = container.get("state") or {}
    if "terminated" in state:
        return {**container, "ready": False, "started": False}
    terminated = {
        "exitCode": 137,
        "reason": "ContainerStatusUnknown",
        "message": "The container could not be located when the pod was terminated",
    }
    return {**container, "ready": False, "started": False, "state": {"terminated": terminated}}
