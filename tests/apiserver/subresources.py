"""Subresources (TokenRequest, Binding, ephemeral containers) and bearer-token authentication.

- ``serviceaccounts/<name>/token`` follows the upstream "TokenRequest" API reference and
  "Managing Service Accounts" (bound service account tokens): the body is an
  ``authentication.k8s.io/v1`` TokenRequest; ``spec.expirationSeconds`` defaults to 3600 and
  may not be under 600 (the test can lower that floor); a ``boundObjectRef`` to a Pod must
  name an existing pod, with a matching uid when given. The answer is the TokenRequest with
  ``status.token`` and ``status.expirationTimestamp``. The token is a JWT-shaped string
  (HS256 over the upstream claims: iss, sub, aud, exp, iat, nbf and the ``kubernetes.io``
  claim); the server accepts it as a bearer token until it expires.
- ``pods/<name>/binding`` follows the Binding API the scheduler uses: it sets
  ``spec.nodeName`` once (409 if already bound) and adds a PodScheduled condition.
- ``pods/<name>/ephemeralcontainers`` follows "Ephemeral Containers" and the pod strategy of
  the same name (what ``kubectl debug`` writes): GET answers the Pod; PUT takes a Pod, PATCH
  patches the Pod, and of the result only ``spec.ephemeralContainers`` is kept (the rest of
  the spec stays as stored). Ephemeral containers may only be added: changing or removing one
  is 422, as are a missing name or image, a name another container has, a
  ``targetContainerName`` that names no container, and the fields an ephemeral container may
  not have (ports, probes, lifecycle, resources, restartPolicy). New ones get the container
  defaults (imagePullPolicy from the tag, terminationMessagePath and Policy).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from tests.apiserver import errors
from tests.apiserver.admission import _default_pull_policy as default_pull_policy
from tests.apiserver.patch import PatchError, apply
from tests.apiserver.resources import PODS, SERVICEACCOUNTS
from tests.apiserver.store import Store, rfc3339

Obj = dict[str, Any]
ISSUER = "https://kubernetes.default.svc.cluster.local"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Tokens:
    """Bearer tokens the server accepts: static ones (test users) and issued ones."""

    static: dict[str, str] = field(default_factory=dict)  # token -> user name
    issued: dict[str, tuple[str, float]] = field(default_factory=dict)  # token -> (user, exp)
    min_expiration_seconds: int = 600
    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def authenticate(self, token: str) -> str | None:
        if token in self.static:
            return self.static[token]
        entry = self.issued.get(token)
        if entry is not None and entry[1] > time.time():
            return entry[0]
        return None

    def sign(self, claims: Obj) -> str:
        header = _b64url(json.dumps({"alg": "HS256", "kid": "test"}).encode())
        payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
        mac = hmac.new(self._key, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(mac)}"


def token_request(store: Store, tokens: Tokens, namespace: str, name: str, body: Obj) -> Obj:
    sa = store.find(SERVICEACCOUNTS, namespace, name)
    if sa is None:
        raise errors.not_found(SERVICEACCOUNTS, name)
    spec = dict(body.get("spec") or {})
    seconds = int(spec.get("expirationSeconds") or 3600)
    if seconds < tokens.min_expiration_seconds:
        raise errors.ApiError(
            422,
            "Invalid",
            f'TokenRequest.authentication.k8s.io "{name}" is invalid: spec.expirationSeconds: '
            f"Invalid value: {seconds}: may not specify a duration less than "
            f"{tokens.min_expiration_seconds} seconds",
        )
    now = store.clock()
    sa_meta = sa["metadata"]
    k8s_claim: Obj = {
        "namespace": namespace,
        "serviceaccount": {"name": name, "uid": sa_meta["uid"]},
    }
    bound = spec.get("boundObjectRef")
    if bound:
        if bound.get("kind") != "Pod":
            raise errors.bad_request(f"cannot bind token to a {bound.get('kind')!r}")
        pod = store.find(PODS, namespace, bound.get("name", ""))
        if pod is None:
            raise errors.not_found(PODS, bound.get("name", ""))
        if bound.get("uid") and bound["uid"] != pod["metadata"]["uid"]:
            raise errors.conflict(
                PODS,
                bound["name"],
                f"the UID in the bound object reference ({bound['uid']}) does not match the "
                f"UID in record. The object might have been deleted and then recreated",
            )
        k8s_claim["pod"] = {"name": bound["name"], "uid": pod["metadata"]["uid"]}
        if pod.get("spec", {}).get("nodeName"):
            k8s_claim["node"] = {"name": pod["spec"]["nodeName"]}
    audiences = list(spec.get("audiences") or [ISSUER])
    subject = f"system:serviceaccount:{namespace}:{name}"
    claims = {
        "aud": audiences,
        "exp": int(now + seconds),
        "iat": int(now),
        "nbf": int(now),
        "iss": ISSUER,
        "jti": secrets.token_hex(8),
        "kubernetes.io": k8s_claim,
        "sub": subject,
    }
    token = tokens.sign(claims)
    tokens.issued[token] = (subject, now + seconds)
    spec["audiences"] = audiences
    spec["expirationSeconds"] = seconds
    return {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": rfc3339(now + seconds)},
    }


def bind(store: Store, namespace: str, name: str, body: Obj) -> Obj:
    pod = store.find(PODS, namespace, name)
    if pod is None:
        raise errors.not_found(PODS, name)
    target = (body.get("target") or {}).get("name")
    if not target:
        raise errors.invalid(PODS, name, "target.name: Required value")
    uid = (body.get("metadata") or {}).get("uid")
    if uid and uid != pod["metadata"]["uid"]:
        raise errors.conflict(PODS, name, "Precondition failed: UID mismatch")
    if pod["spec"].get("nodeName"):
        raise errors.conflict(
            PODS, name, f'pod {name} is already assigned to node "{pod["spec"]["nodeName"]}"'
        )
    new = copy.deepcopy(pod)
    new["spec"]["nodeName"] = target
    conditions = new.setdefault("status", {}).setdefault("conditions", [])
    conditions[:] = [c for c in conditions if c.get("type") != "PodScheduled"]
    conditions.append(
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": rfc3339(store.clock())}
    )
    store.replace(PODS, new)
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": 201,
    }


EPHEMERAL = "ephemeralcontainers"
_EPHEMERAL_FORBIDDEN = (
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "resources",
    "restartPolicy",
)


def patch_ephemeral(store: Store, namespace: str, name: str, content_type: str, body: Any) -> Obj:
    pod = store.get(PODS, namespace, name)
    try:
        patched = apply(content_type, copy.deepcopy(pod), body, "Pod")
    except (PatchError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise errors.invalid(PODS, name, f"the patch does not apply: {exc}") from exc
    return update_ephemeral(store, namespace, name, patched)


def update_ephemeral(store: Store, namespace: str, name: str, body: Obj) -> Obj:
    """Take ``spec.ephemeralContainers`` from ``body`` (a Pod), if only additions."""
    pod = store.get(PODS, namespace, name)
    uid = (body.get("metadata") or {}).get("uid")
    if uid and uid != pod["metadata"]["uid"]:
        raise errors.conflict(PODS, name, "Precondition failed: UID mismatch")
    wanted = copy.deepcopy((body.get("spec") or {}).get("ephemeralContainers") or [])
    spec = pod["spec"]
    old = {c["name"]: c for c in spec.get("ephemeralContainers") or []}
    gone = sorted(set(old) - {c.get("name") for c in wanted})
    if gone:
        raise errors.invalid(
            PODS,
            name,
            f'spec.ephemeralContainers: Forbidden: existing ephemeral containers "{gone[0]}" '
            "may not be removed",
        )
    targets = {
        c["name"] for group in ("containers", "initContainers") for c in spec.get(group) or []
    }
    taken = targets | set(old)
    for i, container in enumerate(wanted):
        if container.get("name") in old:
            if container != old[container["name"]]:
                raise errors.invalid(
                    PODS,
                    name,
                    f"spec.ephemeralContainers: Forbidden: existing ephemeral containers "
                    f'"{container["name"]}" may not be changed',
                )
            continue
        _check_new_ephemeral(name, f"spec.ephemeralContainers[{i}]", container, taken, targets)
        taken.add(container["name"])
    new = copy.deepcopy(pod)
    new["spec"]["ephemeralContainers"] = wanted
    return store.replace(PODS, new)


def _check_new_ephemeral(
    pod: str, path: str, container: Obj, taken: set[str], targets: set[str]
) -> None:
    """``taken``: every container name so far; ``targets``: the pod's own containers."""
    for required in ("name", "image"):
        if not container.get(required):
            raise errors.invalid(PODS, pod, f"{path}.{required}: Required value")
    if container["name"] in taken:
        raise errors.invalid(PODS, pod, f'{path}.name: Duplicate value: "{container["name"]}"')
    for forbidden in _EPHEMERAL_FORBIDDEN:
        # Set means not empty: kubectl debug sends ``resources: {}``, which upstream allows.
        if container.get(forbidden) not in (None, {}, []):
            raise errors.invalid(
                PODS,
                pod,
                f"{path}.{forbidden}: Forbidden: cannot be set for an Ephemeral Container",
            )
    target = container.get("targetContainerName")
    if target and target not in targets:
        raise errors.invalid(PODS, pod, f'{path}.targetContainerName: Not found: "{target}"')
    container.setdefault("imagePullPolicy", default_pull_policy(container["image"]))
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
