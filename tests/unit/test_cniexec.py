"""CNIExec: the CNI protocol (environment, stdin, chaining, DEL order) and its record cache.

The plugins are one fake script under several names: it appends what it was given (its
name, the CNI environment and its stdin) to a JSON-lines log and answers ADD with a result
naming itself, so the tests see exactly what a real plugin would have seen. Environment
variables steer it: FAKE_CNI_FAIL=<type>:<command> makes it fail the CNI way,
FAKE_CNI_SLEEP makes it hang.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from nodeagent.network import cniexec
from nodeagent.network.cniexec import CNIError, CNIExec

FAKE_PLUGIN = f"""#!{sys.executable}
import json, os, sys, time
name = os.path.basename(sys.argv[0])
stdin = json.loads(sys.stdin.read())
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open(os.environ["FAKE_CNI_LOG"], "a") as log:
    log.write(json.dumps({{"plugin": name, "env": env, "stdin": stdin}}) + "\\n")
if os.environ.get("FAKE_CNI_SLEEP"):
    time.sleep(float(os.environ["FAKE_CNI_SLEEP"]))
if os.environ.get("FAKE_CNI_FAIL") == name + ":" + env["CNI_COMMAND"]:
    print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "boom", "details": name}}))
    sys.exit(1)
if env["CNI_COMMAND"] == "ADD":
    prev = stdin.get("prevResult") or {{"cniVersion": "1.0.0", "ips": []}}
    if name == "fake-ipam":
        prev = dict(prev, ips=[{{"address": "fd00::5/64"}}, {{"address": "10.1.2.3/24"}}])
    prev = dict(prev, seen=list(prev.get("seen", [])) + [name])
    print(json.dumps(prev))
"""


def conflist(*types: str, name: str = "testnet", **extra: Any) -> dict[str, Any]:
    plugins = [{"type": t, **extra.get(t.replace("-", "_"), {})} for t in types]
    return {"cniVersion": "1.0.0", "name": name, "plugins": plugins}


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    bin_dir.mkdir()
    conf_dir.mkdir()
    for name in ("fake-ipam", "fake-ports", "fake-other"):
        plugin = bin_dir / name
        plugin.write_text(FAKE_PLUGIN)
        plugin.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_CNI_LOG", str(log))
    monkeypatch.delenv("FAKE_CNI_FAIL", raising=False)
    monkeypatch.delenv("FAKE_CNI_SLEEP", raising=False)
    conf = conflist(
        "fake-ipam", "fake-ports", fake_ports={"capabilities": {"portMappings": True}, "snat": 1}
    )
    (conf_dir / "10-test.conflist").write_text(json.dumps(conf))
    return {"bin": bin_dir, "conf": conf_dir, "cache": tmp_path / "cache", "log": log}


def make(env: dict[str, Path], **kw: Any) -> CNIExec:
    return CNIExec(conf_dir=env["conf"], bin_dirs=(env["bin"],), cache_dir=env["cache"], **kw)


def calls(env: dict[str, Path]) -> list[dict[str, Any]]:
    if not env["log"].exists():
        return []
    return [json.loads(line) for line in env["log"].read_text().splitlines()]


PORTS = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}


async def test_add_runs_plugins_in_order_with_chained_results(env: dict[str, Path]) -> None:
    net = make(env)
    ip = await net.add(
        "c1", "/proc/42/ns/net", cni_args=[("K8S_POD_NAME", "web")], capability_args=PORTS
    )
    assert ip == "10.1.2.3"  # IPv4 preferred over the IPv6 listed first
    first, second = calls(env)
    assert [first["plugin"], second["plugin"]] == ["fake-ipam", "fake-ports"]
    assert first["env"] == {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/proc/42/ns/net",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=web",
        "CNI_PATH": str(env["bin"]),
    }
    # The list's name and version are injected; the first plugin has no prevResult.
    assert first["stdin"] == {"type": "fake-ipam", "name": "testnet", "cniVersion": "1.0.0"}
    assert second["stdin"]["prevResult"]["seen"] == ["fake-ipam"]
    assert second["stdin"]["snat"] == 1
    # runtimeConfig only for a plugin declaring the capability.
    assert second["stdin"]["runtimeConfig"] == PORTS
    assert net.address("c1") == "10.1.2.3"
    assert net.recorded() == ["c1"]


async def test_capabilities_without_values_send_no_runtime_config(env: dict[str, Path]) -> None:
    await make(env).add("c1", "/ns", capability_args={})
    assert all("runtimeConfig" not in c["stdin"] for c in calls(env))


async def test_del_runs_in_reverse_with_the_add_result_and_forgets(env: dict[str, Path]) -> None:
    net = make(env)
    await net.add("c1", "/ns", cni_args=[("K8S_POD_NAME", "web")], capability_args=PORTS)
    env["log"].unlink()
    await net.delete("c1", "")
    first, second = calls(env)
    assert [first["plugin"], second["plugin"]] == ["fake-ports", "fake-ipam"]
    for call in (first, second):
        assert call["env"]["CNI_COMMAND"] == "DEL"
        assert call["env"]["CNI_NETNS"] == ""
        assert call["env"]["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAME=web"
        # Each DEL gets the final ADD result, not a chain of DEL outputs.
        assert call["stdin"]["prevResult"]["seen"] == ["fake-ipam", "fake-ports"]
    assert first["stdin"]["runtimeConfig"] == PORTS
    assert net.address("c1") is None
    assert net.recorded() == []


async def test_del_without_a_record_does_nothing(env: dict[str, Path]) -> None:
    await make(env).delete("never-added", "/ns")
    assert calls(env) == []


async def test_del_uses_the_recorded_conflist_not_the_current_one(env: dict[str, Path]) -> None:
    net = make(env)
    await net.add("c1", "/ns")
    (env["conf"] / "10-test.conflist").write_text(json.dumps(conflist("fake-other")))
    env["log"].unlink()
    await net.delete("c1", "/ns")
    assert [c["plugin"] for c in calls(env)] == ["fake-ports", "fake-ipam"]


async def test_failed_add_keeps_a_record_so_del_can_clean_up(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    net = make(env)
    monkeypatch.setenv("FAKE_CNI_FAIL", "fake-ports:ADD")
    with pytest.raises(CNIError, match=r"CNI ADD fake-ports for c1: boom: fake-ports \(code 11\)"):
        await net.add("c1", "/ns")
    assert net.recorded() == ["c1"]
    assert net.address("c1") is None  # never completed: no IP to report
    monkeypatch.delenv("FAKE_CNI_FAIL")
    env["log"].unlink()
    await net.delete("c1", "")
    assert [c["plugin"] for c in calls(env)] == ["fake-ports", "fake-ipam"]
    # No result was recorded, so DEL gets no prevResult.
    assert all("prevResult" not in c["stdin"] for c in calls(env))
    assert net.recorded() == []


async def test_failed_del_runs_every_plugin_and_keeps_the_record(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    net = make(env)
    await net.add("c1", "/ns")
    env["log"].unlink()
    monkeypatch.setenv("FAKE_CNI_FAIL", "fake-ports:DEL")
    with pytest.raises(CNIError, match="boom"):
        await net.delete("c1", "/ns")
    assert [c["plugin"] for c in calls(env)] == ["fake-ports", "fake-ipam"]  # IPAM still freed
    assert net.recorded() == ["c1"]  # so the next DEL retries


async def test_missing_plugin_is_an_error(env: dict[str, Path]) -> None:
    (env["conf"] / "10-test.conflist").write_text(json.dumps(conflist("nosuch")))
    with pytest.raises(CNIError, match="failed to find plugin 'nosuch'"):
        await make(env).add("c1", "/ns")


async def test_hung_plugin_is_killed_at_the_timeout(
    env: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_CNI_SLEEP", "30")
    with pytest.raises(CNIError, match=r"timed out after 0\.3s"):
        await make(env, timeout_s=0.3).add("c1", "/ns")


def test_first_config_file_by_name_wins_and_dot_files_are_ignored(tmp_path: Path) -> None:
    (tmp_path / ".00-hidden.conflist").write_text("not json")
    (tmp_path / "00-notes.txt").write_text("not a config")
    (tmp_path / "20-b.conflist").write_text(json.dumps(conflist("b", name="second")))
    (tmp_path / "10-a.conf").write_text(
        json.dumps({"cniVersion": "0.4.0", "name": "single", "type": "bridge", "x": 1})
    )
    net = cniexec.load_network_list(tmp_path)
    assert net.name == "single"
    assert net.cni_version == "0.4.0"
    assert net.plugins == ({"cniVersion": "0.4.0", "name": "single", "type": "bridge", "x": 1},)


def test_no_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CNIError, match="no CNI network configuration"):
        cniexec.load_network_list(tmp_path)
    with pytest.raises(CNIError, match="cannot read"):
        cniexec.load_network_list(tmp_path / "missing")


@pytest.mark.parametrize(
    "raw",
    [
        {"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]},
        {"cniVersion": "1.0.0", "name": "n", "plugins": []},
        {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../evil"}]},
        {"cniVersion": "1.0.0", "name": "n", "plugins": ["bridge"]},
    ],
)
def test_invalid_lists_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(CNIError):
        cniexec.parse_network_list(raw)


def test_plugin_stdin_never_forwards_a_static_runtime_config() -> None:
    net = cniexec.parse_network_list(conflist("p"))
    plugin = {"type": "p", "runtimeConfig": {"portMappings": ["stale"]}}
    data = json.loads(cniexec.plugin_stdin(net, plugin, capability_args={}, prev_result=None))
    assert data == {"type": "p", "name": "testnet", "cniVersion": "1.0.0"}


def test_result_ip() -> None:
    assert cniexec.result_ip({"ips": [{"address": "10.0.0.9/16"}]}) == "10.0.0.9"
    assert cniexec.result_ip({"ips": [{"address": "fd00::9/64"}]}) == "fd00::9"
    assert cniexec.result_ip({"ips": []}) == ""
    assert cniexec.result_ip({}) == ""


def test_cni_args_string() -> None:
    assert cniexec.cni_args_string([]) == "IgnoreUnknown=1"
    assert cniexec.cni_args_string([("A", "1"), ("B", "x")]) == "IgnoreUnknown=1;A=1;B=x"
