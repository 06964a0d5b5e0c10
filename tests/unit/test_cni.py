"""The CNI conflist: what it says, and how it is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nodeagent.network import cni


def render() -> dict[str, Any]:
    return cni.render_conflist(pod_cidr="10.244.3.0/24", ipam_data_dir="/var/lib/x/ipam")


def test_bridge_and_portmap_chain() -> None:
    conf = cni.render_conflist(pod_cidr="10.244.3.0/24", ipam_data_dir="/d", name="n1")
    assert conf["cniVersion"] == "1.0.0"
    assert conf["name"] == "n1"
    bridge, portmap = conf["plugins"]
    assert bridge["type"] == "bridge"
    assert bridge["bridge"] == "na0"
    assert bridge["isGateway"] is True
    assert bridge["ipMasq"] is True
    assert bridge["hairpinMode"] is True
    assert bridge["ipam"] == {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.3.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "/d",
    }
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    assert "loopback" not in json.dumps(conf)


def test_ipv6_default_route() -> None:
    conf = cni.render_conflist(pod_cidr="fd00:10::/64", ipam_data_dir="/d")
    assert conf["plugins"][0]["ipam"]["routes"] == [{"dst": "::/0"}]


@pytest.mark.parametrize("cidr", ["10.244.3.1/24", "not-a-cidr", "10.244.0.0/33"])
def test_rejects_bad_cidr(cidr: str) -> None:
    with pytest.raises(ValueError):
        cni.render_conflist(pod_cidr=cidr, ipam_data_dir="/d")


@pytest.mark.parametrize("bridge", ["", "a-very-long-bridge-name", "a/b"])
def test_rejects_bad_bridge(bridge: str) -> None:
    with pytest.raises(ValueError):
        cni.render_conflist(pod_cidr="10.0.0.0/24", bridge=bridge, ipam_data_dir="/d")


def test_write_replaces_only_its_file(tmp_path: Path) -> None:
    other = tmp_path / "99-other.conflist"
    other.write_text("{}")
    first = cni.write_conflist(tmp_path, render())
    assert first == tmp_path / "10-nodeagent.conflist"
    assert json.loads(first.read_text()) == render()

    changed = cni.render_conflist(pod_cidr="10.244.4.0/24", ipam_data_dir="/d")
    second = cni.write_conflist(tmp_path, changed)
    assert second == first
    assert json.loads(second.read_text()) == changed
    assert other.read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["10-nodeagent.conflist", other.name]
    assert oct(second.stat().st_mode & 0o777) == oct(0o644)


def test_write_creates_the_directory(tmp_path: Path) -> None:
    path = cni.write_conflist(tmp_path / "a" / "b", render())
    assert path.is_file()


def test_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        cni.write_conflist(tmp_path, {"bad": object()})
    assert list(tmp_path.iterdir()) == []
