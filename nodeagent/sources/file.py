"""The manifest directory as a pod source (the kubelet's static pods).

Every ``*.yaml``, ``*.yml`` and ``*.json`` file (dot-files ignored) may hold several
documents. A scan reads the directory into one ``DesiredState``: pods and services keyed
by ``namespace/name``, plus every error, each naming the file, the object and the field.

Besides Pods and Services the directory may hold ConfigMaps and Secrets, which its pods
reference as they would in a cluster (volumes, ``envFrom``, ``valueFrom``). Such a pod is a
``PodTemplate``: validated here in its final shape, resolved against the directory's objects
by ``kubelet/staticrefs.py`` (which writes its volume files). Any other kind (a Deployment, a
ReplicaSet, ...) is reported as unsupported, with its file and kind, and ignored: pods are
the unit of the node.

Two rules keep bad input from hurting running pods:
- a file that fails to parse (half-written, or broken by an edit) keeps contributing what
  it last contributed successfully, until it parses again or is removed;
- a duplicate ``namespace/name`` is an error for the later file (in name order); the first
  definition stays.

Watching: inotify wakes a rescan as soon as the directory changes, and a timer rescans every
``interval`` anyway (inotify is best effort). A rescan is a cheap stat of the directory;
files are only re-read when their (mtime, size, inode) changed.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog
import yaml

from nodeagent.model import configobjects, refs
from nodeagent.model.configobjects import ConfigObject
from nodeagent.model.fields import ValidationError
from nodeagent.model.pod import Pod
from nodeagent.model.validate import (
    ServiceDoc,
    _content_uid,
    object_name,
    parse_document,
    parse_pod,
)
from nodeagent.sources.inotify import DirectoryWatch

log = structlog.get_logger("nodeagent.source.file")

SUFFIXES = (".yaml", ".yml", ".json")
MAX_FILE_BYTES = 1024 * 1024  # the default of --max-manifest-bytes
MAX_DOCUMENTS = 256
# YAML aliases let a few lines stand for an exponential tree (a "billion laughs"); what a
# document expands to is bounded, and so is its depth, before anything walks it.
MAX_NODES = 100_000
MAX_DEPTH = 64
SETTLE_S = 0.01
CONFIG_KINDS = ("ConfigMap", "Secret")
CONFIG_SOURCE = "kubernetes.io/config.source"
CONFIG_HASH = "kubernetes.io/config.hash"


@dataclass(frozen=True)
class SourceError:
    source: str  # the file
    object: str  # "Pod default/web", or "document 2" when it has no identity
    field: str  # the field path, "" for the whole document
    message: str

    def to_json(self) -> dict[str, str]:
        return {
            "source": self.source,
            "object": self.object,
            "field": self.field,
            "message": self.message,
        }


@dataclass(frozen=True)
class PodTemplate:
    """A pod that references ConfigMaps, Secrets or the downward API through volumes or env.

    ``doc`` is the manifest with ``metadata.uid`` (the static pod's content hash) and the
    static-pod annotations filled in; ``shape`` is it validated with every reference still
    unresolved (placeholder values): what its status shows while it waits."""

    shape: Pod
    doc: dict[str, Any]

    @property
    def key(self) -> str:
        return self.shape.key

    @property
    def source(self) -> str:
        return self.shape.source


@dataclass(frozen=True)
class FileResult:
    pods: tuple[Pod, ...] = ()
    services: tuple[ServiceDoc, ...] = ()
    errors: tuple[SourceError, ...] = ()
    parsed: bool = True  # False: the file as a whole could not be read or parsed
    templates: tuple[PodTemplate, ...] = ()
    configs: tuple[ConfigObject, ...] = ()


@dataclass(frozen=True)
class DesiredState:
    pods: Mapping[str, Pod] = field(default_factory=dict)
    services: Mapping[str, ServiceDoc] = field(default_factory=dict)
    errors: tuple[SourceError, ...] = ()
    templates: Mapping[str, PodTemplate] = field(default_factory=dict)
    config_maps: Mapping[str, ConfigObject] = field(default_factory=dict)
    secrets: Mapping[str, ConfigObject] = field(default_factory=dict)


def read_file(path: Path, *, node_name: str, max_bytes: int = MAX_FILE_BYTES) -> FileResult:
    """Parse one manifest file; never raises."""
    source = str(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return _broken(
                source, f"file of {size} bytes is larger than the limit of {max_bytes} bytes"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return _broken(source, f"cannot read: {exc}")
    try:
        documents = _documents(text, json_file=path.suffix == ".json")
    except RecursionError:
        return _broken(source, f"document nested deeper than {MAX_DEPTH} levels")
    except (yaml.YAMLError, ValueError) as exc:
        return _broken(source, f"malformed {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}")
    pods: list[Pod] = []
    services: list[ServiceDoc] = []
    templates: list[PodTemplate] = []
    configs: list[ConfigObject] = []
    errors: list[SourceError] = []
    for index, doc in enumerate(documents):
        if doc is None:
            continue  # an empty document between separators
        kind = doc.get("kind") if isinstance(doc, Mapping) else None
        try:
            if kind in CONFIG_KINDS:
                configs.append(
                    configobjects.parse_config_object(doc, source=source, obj_name=object_name(doc))
                )
                continue
            if isinstance(kind, str) and kind not in ("Pod", "Service"):
                errors.append(_unsupported(source, doc, kind))
                continue
            if kind == "Pod" and _well_shaped(doc) and refs.needs_rewrite(doc):
                templates.append(_template(doc, source=source, node_name=node_name))
                continue
            obj = parse_document(doc, source=source, node_name=node_name)
        except ValidationError as exc:
            name = exc.obj if isinstance(doc, Mapping) else f"document {index + 1}"
            errors.extend(SourceError(source, name, e.path, e.message) for e in exc.errors)
            continue
        except RecursionError:
            errors.append(SourceError(source, object_name(doc), "", "document nested too deeply"))
            continue
        if isinstance(obj, Pod):
            pods.append(_static(obj))
        else:
            services.append(obj)
    return FileResult(
        tuple(pods),
        tuple(services),
        tuple(errors),
        templates=tuple(templates),
        configs=tuple(configs),
    )


def _well_shaped(doc: Mapping[str, Any]) -> bool:
    """Whether the parts of a pod that references are looked for in have their types. An
    ill-shaped one goes straight to validation, which names the field that is wrong."""
    spec = doc.get("spec")
    if spec is None:
        return True
    if not isinstance(spec, Mapping) or not _list_of_maps(spec.get("volumes")):
        return False
    for group in ("initContainers", "containers"):
        containers = spec.get(group)
        if not _list_of_maps(containers):
            return False
        for c in containers or []:
            if not (_list_of_maps(c.get("env")) and _list_of_maps(c.get("envFrom"))):
                return False
            if any(not isinstance(e.get("valueFrom") or {}, Mapping) for e in c.get("env") or []):
                return False
    return True


def _list_of_maps(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(isinstance(v, Mapping) for v in value))


def _unsupported(source: str, doc: Mapping[str, Any], kind: str) -> SourceError:
    error = SourceError(
        source,
        object_name(doc),
        "kind",
        f"kind {kind} is not supported in standalone mode (pods are the unit of the node); ignored",
    )
    log.warning("manifest_unsupported_kind", source=source, kind=kind, object=error.object)
    return error


def _static(pod: Pod) -> Pod:
    """Mark a file pod as the kubelet marks static pods."""
    annotations = {**pod.annotations, CONFIG_SOURCE: "file", CONFIG_HASH: pod.uid}
    return replace(pod, annotations=annotations)


def _template(doc: Mapping[str, Any], *, source: str, node_name: str) -> PodTemplate:
    """Validate a pod that references ConfigMaps, Secrets or the downward API."""
    full = copy.deepcopy(dict(doc))
    meta = full.get("metadata")
    if isinstance(meta, dict):
        uid = str(meta.get("uid") or _content_uid(doc, node_name))
        annotations = meta.get("annotations")
        annotations = dict(annotations) if isinstance(annotations, Mapping) else {}
        meta["uid"] = uid
        meta["annotations"] = {**annotations, CONFIG_SOURCE: "file", CONFIG_HASH: uid}
    shapes = configobjects.shape_errors(full)
    if shapes:
        raise ValidationError(object_name(doc), shapes)
    errors = configobjects.check(full, standalone=True)
    try:
        shape = parse_pod(
            refs.rewrite(full, pod_dir="", lookup=None), source=source, node_name=node_name
        )
    except ValidationError as exc:
        # A volume the rewrite left alone (its references are wrong) is also "unknown" to the
        # pod's own validation: the precise errors above say why, the generic ones go.
        precise = [e.path for e in errors]
        rest = [e for e in exc.errors if not any(p.startswith(e.path) for p in precise)]
        raise ValidationError(exc.obj, [*rest, *errors]) from exc
    if errors:
        raise ValidationError(object_name(doc), errors)
    return PodTemplate(shape, full)


def _broken(source: str, message: str) -> FileResult:
    return FileResult(errors=(SourceError(source, "file", "", message),), parsed=False)


def _documents(text: str, *, json_file: bool) -> list[Any]:
    if json_file:
        doc = json.loads(text)
        _check_depth(doc)
        # A JSON file may hold one object or a v1 List of them.
        if (
            isinstance(doc, dict)
            and doc.get("kind") == "List"
            and isinstance(doc.get("items"), list)
        ):
            return list(doc["items"])
        return [doc]
    docs = list(yaml.load_all(text, Loader=_BoundedLoader))
    if len(docs) > MAX_DOCUMENTS:
        raise ValueError(f"more than {MAX_DOCUMENTS} documents")
    return docs


class _BoundedLoader(yaml.SafeLoader):
    """safe_load, refusing documents that expand past MAX_NODES or nest past MAX_DEPTH."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_size(node)
        return super().construct_document(node)


def _check_size(root: yaml.Node) -> None:
    """Count what the node graph expands to (an alias counts its whole target again)."""
    sizes: dict[int, int] = {}  # per node, its expanded size (aliases share node objects)
    # Iterative, so that depth cannot hit Python's recursion limit here.
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"document nested deeper than {MAX_DEPTH} levels")
        if id(node) in sizes:
            continue
        children = _children(node)
        if done or not children:
            sizes[id(node)] = 1 + sum(sizes.get(id(c), 0) for c in children)
            if sizes[id(node)] > MAX_NODES:
                raise ValueError(f"document expands to more than {MAX_NODES} nodes (aliases)")
            continue
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)


def _check_depth(doc: Any) -> None:
    """JSON has no aliases; only its depth needs a bound."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"document nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def merge(results: Mapping[str, FileResult]) -> DesiredState:
    """Combine per-file results in file-name order; later duplicates are errors."""
    pods: dict[str, Pod | PodTemplate] = {}
    services: dict[str, ServiceDoc] = {}
    configs: dict[str, dict[str, ConfigObject]] = {kind: {} for kind in CONFIG_KINDS}
    errors: list[SourceError] = []
    for source in sorted(results):
        result = results[source]
        errors.extend(result.errors)
        groups: list[tuple[str, Any, dict[str, Any]]] = [
            ("Pod", (*result.pods, *result.templates), pods),
            ("Service", result.services, services),
            *((k, [c for c in result.configs if c.kind == k], configs[k]) for k in CONFIG_KINDS),
        ]
        for kind, items, target in groups:
            for item in items:
                existing = target.get(item.key)
                if existing is not None:
                    errors.append(
                        SourceError(
                            source,
                            f"{kind} {item.key}",
                            "metadata.name",
                            f"duplicate {kind.lower()} name: already defined in {existing.source}",
                        )
                    )
                    continue
                target[item.key] = item
    return DesiredState(
        {k: p for k, p in pods.items() if isinstance(p, Pod)},
        services,
        tuple(errors),
        templates={k: t for k, t in pods.items() if isinstance(t, PodTemplate)},
        config_maps=configs["ConfigMap"],
        secrets=configs["Secret"],
    )


Signature = tuple[int, int, int]


class FileSource:
    """Watches one directory and calls ``on_update`` with the full desired state on change."""

    def __init__(
        self,
        directory: Path,
        *,
        node_name: str,
        on_update: Callable[[DesiredState], None],
        interval_s: float = 1.0,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.node_name = node_name
        self._on_update = on_update
        self._interval = interval_s
        self._seen: dict[str, Signature] = {}
        self._results: dict[str, FileResult] = {}
        self._good: dict[str, FileResult] = {}  # last result that parsed, per file
        self.state = DesiredState()
        self._loaded = False

    async def run(self) -> None:
        watch = DirectoryWatch(self.directory)
        try:
            while True:
                await self.scan()
                # Let a burst of events (an editor's save, many files copied) settle.
                await watch.wait(self._interval)
                await asyncio.sleep(SETTLE_S if watch.active else 0)
        finally:
            watch.close()

    async def scan(self) -> bool:
        """Re-read what changed; True (and ``on_update``) when the desired state changed."""
        listing = await asyncio.to_thread(self._list)
        changed = set(listing.items()) ^ set(self._seen.items())
        if not changed and self._loaded:
            return False
        for name in {n for n, _ in changed}:
            if name not in listing:
                self._results.pop(name, None)
                self._good.pop(name, None)
                log.info("manifest_removed", source=name)
                continue
            result = await asyncio.to_thread(
                read_file, Path(name), node_name=self.node_name, max_bytes=self.max_file_bytes
            )
            self._results[name] = result
            if result.parsed:
                self._good[name] = result
            for error in result.errors:
                log.warning("manifest_invalid", **error.to_json())
        self._seen = listing
        state = merge(self._effective())
        if state == self.state and self._loaded:
            return False
        self._loaded = True
        self.state = state
        self._on_update(state)
        return True

    def _effective(self) -> dict[str, FileResult]:
        """Current results, with a broken file standing in for its last good content."""
        effective = {}
        for name, result in self._results.items():
            good = self._good.get(name)
            if not result.parsed and good is not None:
                result = replace(good, errors=result.errors + good.errors)
            effective[name] = result
        return effective

    def _list(self) -> dict[str, Signature]:
        found: dict[str, Signature] = {}
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            log.warning("manifest_dir_unreadable", path=str(self.directory), error=str(exc))
            return dict(self._seen)  # keep what we had: a flaky mount must not kill pods
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(SUFFIXES):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            if entry.is_file():
                found[entry.path] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return found
