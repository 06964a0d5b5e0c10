"""The kubelet-managed /etc/hosts (kubelet.etchosts)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nodeagent.kubelet import etchosts
from nodeagent.model.pod import Pod
from nodeagent.model.validate import parse_pod


def pod(**spec: Any) -> Pod:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hostaliases-pod", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
    }
    return parse_pod(doc, source="t", node_name="n")


# The documented example (tasks/network/customize-hosts-file-for-pods).
ALIASES = [
    {"ip": "127.0.0.1", "hostnames": ["foo.local", "bar.local"]},
    {"ip": "10.1.2.3", "hostnames": ["foo.remote", "bar.remote"]},
]


def test_documented_host_aliases_file() -> None:
    text = etchosts.managed_text(pod(hostAliases=ALIASES), "10.244.135.10", cluster_domain="cl")
    assert text == (
        "# Kubernetes-managed hosts file.\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "fe00::0\tip6-mcastprefix\n"
        "fe00::1\tip6-allnodes\n"
        "fe00::2\tip6-allrouters\n"
        "10.244.135.10\thostaliases-pod\n"
        "\n"
        "# Entries added by HostAliases.\n"
        "127.0.0.1\tfoo.local\tbar.local\n"
        "10.1.2.3\tfoo.remote\tbar.remote\n"
    )


def test_hostname_and_subdomain_give_the_fqdn_first() -> None:
    text = etchosts.managed_text(
        pod(hostname="db-0", subdomain="db"), "10.0.0.7", cluster_domain="cluster.local"
    )
    assert text.endswith("10.0.0.7\tdb-0.db.default.svc.cluster.local\tdb-0\n")
    assert "Entries added by HostAliases" not in text


def test_no_ip_no_pod_line() -> None:
    text = etchosts.managed_text(pod(), "", cluster_domain="cluster.local")
    assert text.splitlines()[-1] == "fe00::2\tip6-allrouters"


def test_host_network_pod_gets_the_nodes_file_and_its_aliases() -> None:
    text = etchosts.host_network_text(pod(hostNetwork=True, hostAliases=ALIASES[:1]), "1.1.1.1 n")
    assert text == (
        "# Kubernetes-managed hosts file (host network).\n"
        "1.1.1.1 n\n"
        "\n# Entries added by HostAliases.\n127.0.0.1\tfoo.local\tbar.local\n"
    )


def test_write_puts_the_file_in_the_pod_dir(tmp_path: Path) -> None:
    node_hosts = tmp_path / "hosts"
    node_hosts.write_text("10.9.9.9 node\n")
    host_pod = pod(hostNetwork=True)
    path = asyncio.run(
        etchosts.write(tmp_path / "p", host_pod, "", cluster_domain="c", node_hosts=node_hosts)
    )
    assert Path(path) == tmp_path / "p" / "etc-hosts"
    assert Path(path).read_text().endswith("10.9.9.9 node\n")
    assert oct(Path(path).stat().st_mode & 0o777) == "0o644"
