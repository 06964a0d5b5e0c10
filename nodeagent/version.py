"""What this agent says it is: its own release and the Kubernetes release it behaves as.

Version-skew tooling (``kubectl version``, upgrade checks, the kubelet skew policy) reads a
node's ``status.nodeInfo.kubeletVersion`` as a Kubernetes version, so ours is one:
``v<Kubernetes>-nodeagent.<agent>``, e.g. ``v1.31.0-nodeagent.0.1.0``. ``KUBERNETES_VERSION``
names the release whose kubelet and kube-proxy semantics the code follows (admission,
termination, status, probes); change it when the code moves to a later release's behaviour.
``kubeProxyVersion`` stays empty, as the kubelet leaves it since the field's deprecation
(KEP-4004).
"""

from __future__ import annotations

from importlib import metadata

PROG = "nodeagent"
KUBERNETES_VERSION = "1.31.0"
FALLBACK_VERSION = "0.1.0"  # running from a source tree, not installed


def agent_version() -> str:
    try:
        return metadata.version(PROG)
    except metadata.PackageNotFoundError:
        return FALLBACK_VERSION


def kubelet_version() -> str:
    """``nodeInfo.kubeletVersion``: the Kubernetes release we track, tagged as ours."""
    return f"v{KUBERNETES_VERSION}-{PROG}.{agent_version()}"


def kubernetes_minor() -> str:
    """``1.31``: what the kubelet puts in its probes' ``User-Agent: kube-probe/<minor>``."""
    return ".".join(KUBERNETES_VERSION.split(".")[:2])
