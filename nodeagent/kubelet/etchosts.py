"""The kubelet-managed /etc/hosts of a pod: the text (pure) and the file in the pod dir.

Every container of a pod mounts the same file, so the hosts file is the same on both
runtimes (containerd would otherwise copy the node's file, Docker write its own). Format, as
the kubelet writes it: a header, the localhost lines, the pod IP with its hostname (fully
qualified first when the pod has a subdomain), then the hostAliases, one line per entry.
A host-network pod sees the node's own /etc/hosts instead, with the aliases appended.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nodeagent.fsutil import write_file_atomic
from nodeagent.model.pod import HostAlias, Pod

HEADER = "# Kubernetes-managed hosts file.\n"
HEADER_HOST_NETWORK = "# Kubernetes-managed hosts file (host network).\n"
ALIASES_HEADER = "# Entries added by HostAliases.\n"
_LOCALHOST = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)
FILE_NAME = "etc-hosts"


def pod_hostname(pod: Pod) -> str:
    """spec.hostname, else the pod name, cut to a DNS label's 63 characters."""
    return (pod.spec.hostname or pod.name)[:63]


FQDN_MAX = 64  # the kernel's nodename field (65 bytes with its terminating NUL)


def kernel_hostname(pod: Pod, *, cluster_domain: str) -> str:
    """The container's hostname: with ``setHostnameAsFQDN`` and a subdomain, the pod's FQDN
    (as upstream's GetNodenameForKernel); a ValueError if that is too long for the kernel."""
    hostname = pod_hostname(pod)
    if not (pod.spec.set_hostname_as_fqdn and pod.spec.subdomain):
        return hostname
    fqdn = f"{hostname}.{pod.spec.subdomain}.{pod.namespace}.svc.{cluster_domain}"
    if len(fqdn) > FQDN_MAX:
        raise ValueError(
            f"failed to construct FQDN from pod hostname and cluster domain, FQDN {fqdn} is "
            f"too long ({FQDN_MAX} characters is the max, {len(fqdn)} characters requested)"
        )
    return fqdn


def aliases_text(aliases: tuple[HostAlias, ...]) -> str:
    if not aliases:
        return ""
    lines = "".join(f"{a.ip}\t{chr(9).join(a.hostnames)}\n" for a in aliases)
    return "\n" + ALIASES_HEADER + lines


def managed_text(pod: Pod, pod_ip: str, *, cluster_domain: str) -> str:
    """The hosts file of a pod on the pod network."""
    text = HEADER + _LOCALHOST
    hostname = pod_hostname(pod)
    if pod_ip:
        if pod.spec.subdomain:
            fqdn = f"{hostname}.{pod.spec.subdomain}.{pod.namespace}.svc.{cluster_domain}"
            text += f"{pod_ip}\t{fqdn}\t{hostname}\n"
        else:
            text += f"{pod_ip}\t{hostname}\n"
    return text + aliases_text(pod.spec.host_aliases)


def host_network_text(pod: Pod, node_hosts: str) -> str:
    """The hosts file of a host-network pod: the node's, plus the pod's aliases."""
    if node_hosts and not node_hosts.endswith("\n"):
        node_hosts += "\n"
    return HEADER_HOST_NETWORK + node_hosts + aliases_text(pod.spec.host_aliases)


async def write(
    pod_dir: Path, pod: Pod, pod_ip: str, *, cluster_domain: str, node_hosts: Path
) -> str:
    """Write the pod's hosts file (atomically: containers may be reading it); its path."""
    if pod.spec.host_network:
        try:
            host = await asyncio.to_thread(node_hosts.read_text, encoding="utf-8")
        except OSError:
            host = ""
        text = host_network_text(pod, host)
    else:
        text = managed_text(pod, pod_ip, cluster_domain=cluster_domain)
    target = pod_dir / FILE_NAME
    await asyncio.to_thread(_write, target, text)
    return str(target)


def _write(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # No fsync: the file is written again at every start of the pod.
    write_file_atomic(target, text, mode=0o644, fsync=False)
