"""The Vagrant lab's files: `vagrant validate` accepts the Vagrantfile, the scripts parse,
and the control plane is started the way the README promises.

No VM runs here: these checks are as far as this machine can take the Vagrant lab.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((REPO / "lab" / "vagrant").glob("*.sh"))


def validate(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("vagrant")
    if tool is None:
        pytest.skip("vagrant is not installed (tools/setup-host.sh installs Debian's)")
    environ = {
        **os.environ,
        # Machine state goes to a temporary directory, not the repository's .vagrant/.
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot-vagrant"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        **env,
    }
    # --ignore-provider: no VirtualBox or libvirt plugin is installed here, and the provider
    # blocks are the one part that needs one; everything else (boxes, networks, provisioner
    # paths, unknown settings) is still checked.
    return subprocess.run(
        [tool, "validate", "--ignore-provider"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("workers", ["2", "3"])
def test_vagrant_validate_accepts_the_vagrantfile(tmp_path: Path, workers: str) -> None:
    result = validate(tmp_path, NODEAGENT_WORKERS=workers)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout
    for i in range(1, int(workers) + 1):
        assert f"worker-{i}" in result.stdout
    assert f"worker-{int(workers) + 1}" not in result.stdout


def test_a_bad_worker_count_is_refused_by_name(tmp_path: Path) -> None:
    result = validate(tmp_path, NODEAGENT_WORKERS="0")
    assert result.returncode != 0
    assert "NODEAGENT_WORKERS" in result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_provisioning_scripts_parse(script: Path) -> None:
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=30)
    checker = shutil.which("shellcheck")
    if checker is not None:
        subprocess.run([checker, "-s", "sh", str(script)], check=True, timeout=60)


def test_control_plane_is_k3s_without_agent_cni_or_proxy() -> None:
    text = (REPO / "lab" / "vagrant" / "control-plane.sh").read_text()
    for flag in (
        "--disable-agent",
        "--flannel-backend=none",
        "--disable-network-policy",
        "--disable-kube-proxy",
        "--disable=traefik,servicelb",
    ):
        assert flag in text, flag


def test_workers_run_the_repository_unit_with_the_cluster_settings() -> None:
    text = (REPO / "lab" / "vagrant" / "worker.sh").read_text()
    assert "/vagrant/systemd/nodeagent.service" in text
    for key in ("node_ip:", "cluster_cidr:", "kubeconfig:", "service_cidr:"):
        assert key in text, key


def test_the_workers_config_file_is_one_the_agent_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from nodeagent.config import load_config

    text = (REPO / "lab" / "vagrant" / "worker.sh").read_text()
    body = text.split("<<CONFIG\n", 1)[1].split("\nCONFIG\n", 1)[0]
    kubeconfig = tmp_path / "kubelet.kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    values = {
        "${NODE_NAME}": "worker-1",
        "${NODE_IP}": "192.168.56.11",
        "${CLUSTER_CIDR}": "10.42.0.0/16",
        "${SERVICE_CIDR}": "10.43.0.0/16",
        "/etc/nodeagent/kubelet.kubeconfig": str(kubeconfig),
    }
    for name, value in values.items():
        body = body.replace(name, value)
    path = tmp_path / "config.yaml"
    path.write_text(body + "\n")
    for key in ("NODE_NAME", "NODE_IP", "CLUSTER_CIDR", "SERVICE_CIDR", "KUBECONFIG"):
        monkeypatch.delenv(f"NODEAGENT_{key}", raising=False)
    config = load_config(argparse.Namespace(config=str(path)))
    assert config.node_name == "worker-1" and config.node_ip == "192.168.56.11"
    assert str(config.cluster_cidr) == "10.42.0.0/16"
    assert config.kubeconfig == kubeconfig
