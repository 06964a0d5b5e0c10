"""The container hash: how the kubelet tells that a running container's spec has changed.

Upstream ``HashContainer`` hashes the JSON of the container spec and stores the result on the
container it creates (``io.kubernetes.container.hash``); ``computePodActions`` restarts a
running container whose stored hash differs from its desired spec's. The only container
field the API lets change is the image, so in practice a new image restarts that container.

We hash the model's ``Container`` the way Go's ``json.Marshal`` sees a struct of
``omitempty`` fields: fields at their default value are left out. A field added to the model
later, at its default, therefore leaves every hash as it was, and an agent upgrade restarts
nothing. A container without the label (created before hashes existed) is never restarted
for it.

``env`` is left out. Upstream hashes env as the API holds it (``valueFrom`` references), but
our model holds env resolved: ConfigMap and Secret values, read again when an agent restarts.
Hashing those would restart a running container after an agent restart whenever a value it
refers to changed in between, which the kubelet never does; and the API never lets env change.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import zlib
from collections.abc import Mapping
from typing import Any

from nodeagent.model.pod import Container

LABEL_CONTAINER_HASH = "io.kubernetes.container.hash"


def container_hash(container: Container) -> str:
    """A short, stable hex digest of the container's spec."""
    text = json.dumps(
        _plain(dataclasses.replace(container, env=())), sort_keys=True, separators=(",", ":")
    )
    return format(zlib.crc32(text.encode()), "08x")


def changed(container: Container, labels: Mapping[str, str]) -> bool:
    """Whether an instance carrying ``labels`` was created from a different spec."""
    stored = labels.get(LABEL_CONTAINER_HASH)
    return stored is not None and stored != container_hash(container)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if _is_default(f, item):
                continue
            out[f.name] = _plain(item)
        return out
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _is_default(f: dataclasses.Field[Any], value: Any) -> bool:
    if f.default is not dataclasses.MISSING:
        return bool(value == f.default)
    if f.default_factory is not dataclasses.MISSING:
        return bool(value == f.default_factory())
    return False
