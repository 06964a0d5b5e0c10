"""Config: defaults, the four layers and their precedence, and errors that name key and source."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from pathlib import Path

import pytest

from nodeagent import config as config_module
from nodeagent.cli import build_parser
from nodeagent.config import KEYS, SETTINGS, Config, ConfigError, flag_name, load_config


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests must not see the NODEAGENT_* of whoever runs them, nor the real host name."""
    for key in KEYS:
        monkeypatch.delenv(config_module.env_var(key), raising=False)
    monkeypatch.setattr("socket.gethostname", lambda: "Worker-1.Example")


def flags(*argv: str) -> argparse.Namespace:
    """Parse the way `nodeagent run` does, so the tests cover the real flag defaults."""
    return build_parser().parse_args(["run", *argv])


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nodeagent.yaml"
    path.write_text(text)
    return path


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config_module, "CNI_BIN_CANDIDATES", (tmp_path / "nope", tmp_path))
    cfg = load_config(flags())
    assert cfg == Config(
        node_name="worker-1.example",
        runtime="cri",
        runtime_endpoint="unix:///run/containerd/containerd.sock",
        manifests=None,
        state_dir=Path("/var/lib/nodeagent"),
        status_socket=Path("/run/nodeagent/status.sock"),
        pod_cidr=None,
        cni_conf_dir=Path("/etc/cni/net.d"),
        cni_bin_dir=tmp_path,  # the first candidate that exists
        pod_log_dir=Path("/var/log/pods"),
        pause_image="registry.k8s.io/pause:3.6",
        log_format="console",
        log_level="info",
        file_check_interval_s=1.0,
        relist_interval_s=1.0,
        runtime_timeout_s=10.0,
        max_pods=110,
    )


def test_cni_bin_dir_falls_back_to_first_candidate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(config_module, "CNI_BIN_CANDIDATES", (tmp_path / "a", tmp_path / "b"))
    assert load_config(flags()).cni_bin_dir == tmp_path / "a"


FILE_ONLY = {
    "file_check_interval_s",
    "relist_interval_s",
    "runtime_timeout_s",
    "max_pods",
    "eviction_interval_s",
    "max_manifest_bytes",
    "container_log_monitor_interval_s",
    "gc_interval_s",
    "image_gc_interval_s",
}


def test_each_setting_is_declared_once_and_has_its_flag() -> None:
    assert set(SETTINGS) == set(KEYS) == {f.name for f in dataclasses.fields(Config)}
    given = set(vars(flags())) - {"command", "handler", "config"}
    assert given == set(KEYS) - FILE_ONLY
    assert all(value is None for key, value in vars(flags()).items() if key in KEYS)


def test_flag_help_shows_the_declared_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    defaults = Config(node_name="n1")
    for key in ("state_dir", "status_socket", "service_cidr", "pause_image"):
        assert f"{flag_name(key)} " in text and f"(default: {getattr(defaults, key)})" in text
    # No pod CIDR by default: cluster mode waits for the Node's, standalone takes its own.
    assert defaults.pod_cidr is None
    assert "(default: the Node's spec.podCIDR; standalone 10.88.0.0/16)" in text
    assert "(default: 30000-32767)" in text and "(default: memory.available<100Mi," in text
    assert "(default: 10Mi)" in text and "(default: 5)" in text
    assert "--max-pods" not in text  # a file and environment setting only


def test_config_is_frozen() -> None:
    cfg = Config(node_name="n1")
    with pytest.raises(AttributeError):
        cfg.node_name = "n2"  # type: ignore[misc]


def test_endpoint_default_follows_runtime() -> None:
    assert Config(node_name="n1", runtime="docker").runtime_endpoint == (
        "unix:///var/run/docker.sock"
    )
    assert load_config(flags("--runtime", "docker")).runtime_endpoint == (
        "unix:///var/run/docker.sock"
    )
    explicit = load_config(flags("--runtime", "docker", "--runtime-endpoint", "tcp://h:2375"))
    assert explicit.runtime_endpoint == "tcp://h:2375"


def test_bare_socket_path_becomes_unix_url() -> None:
    cfg = load_config(flags("--runtime-endpoint", "/tmp/c.sock"))
    assert cfg.runtime_endpoint == "unix:///tmp/c.sock"


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        node_name: node-a
        runtime: docker
        manifests: pods
        state_dir: /srv/state
        pod_cidr: 10.99.0.0/24
        log_format: json
        log_level: DEBUG
        file_check_interval_s: 2
        relist_interval_s: 0.5
        max_pods: 20
        """.replace("\n        ", "\n"),
    )
    cfg = load_config(flags("--config", str(path)))
    assert cfg.node_name == "node-a"
    assert cfg.runtime == "docker"
    assert cfg.runtime_endpoint == "unix:///var/run/docker.sock"
    # Relative paths in the file are relative to the file, so both can move together.
    assert cfg.manifests == tmp_path / "pods"
    assert cfg.state_dir == Path("/srv/state")
    assert cfg.pod_cidr == ipaddress.ip_network("10.99.0.0/24")
    assert cfg.log_format == "json"
    assert cfg.log_level == "debug"
    assert cfg.file_check_interval_s == 2.0
    assert cfg.relist_interval_s == 0.5
    assert cfg.max_pods == 20


def test_empty_file_configures_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, "# nothing yet\n")
    assert load_config(flags("--config", str(path))).node_name == "worker-1.example"


def test_precedence_file_env_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "node_name: from-file\nmax_pods: 10\nlog_level: error\n")
    monkeypatch.setenv("NODEAGENT_NODE_NAME", "from-env")
    monkeypatch.setenv("NODEAGENT_MAX_PODS", "20")

    cfg = load_config(flags("--config", str(path), "--node-name", "from-flag"))
    assert cfg.node_name == "from-flag"  # flag > env > file
    assert cfg.max_pods == 20  # env > file (no flag for it)
    assert cfg.log_level == "error"  # file > default


def test_absent_flags_do_not_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "runtime: docker\nlog_format: json\n")
    monkeypatch.setenv("NODEAGENT_POD_CIDR", "10.1.0.0/16")
    cfg = load_config(flags("--config", str(path)))
    assert cfg.runtime == "docker"
    assert cfg.log_format == "json"
    assert cfg.pod_cidr == ipaddress.ip_network("10.1.0.0/16")


def test_env_relative_path_is_relative_to_cwd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NODEAGENT_MANIFESTS", "pods")
    assert load_config(flags()).manifests == tmp_path / "pods"


def test_empty_manifests_means_none(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "manifests: /etc/pods\n")
    monkeypatch.setenv("NODEAGENT_MANIFESTS", "")
    assert load_config(flags("--config", str(path))).manifests is None


def test_unknown_env_vars_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    without = load_config(flags())
    monkeypatch.setenv("NODEAGENT_SOMETHING_ELSE", "x")
    monkeypatch.setenv("NODEAGENT_LOG_LEVEL", "debug")  # a known one, read in the same pass
    assert load_config(flags()) == dataclasses.replace(without, log_level="debug")


# --- Errors name the key and the source --------------------------------------------------


def error_of(args: argparse.Namespace) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(args)
    return info.value


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "node-name: n1\n")
    err = error_of(flags("--config", str(path)))
    assert err.key == "node-name"
    assert err.source == f"config file {path}"
    assert "unknown setting" in str(err)
    assert "did you mean node_name?" in str(err)
    assert str(path) in str(err)


@pytest.mark.parametrize(
    ("line", "key", "expected"),
    [
        ("max_pods: '110'", "max_pods", "must be an integer, got str"),
        ("max_pods: 1.5", "max_pods", "must be an integer, got float"),
        ("max_pods: 0", "max_pods", "must be at least 1"),
        ("relist_interval_s: true", "relist_interval_s", "number of seconds, got bool"),
        ("relist_interval_s: -1", "relist_interval_s", "positive"),
        ("node_name: [a, b]", "node_name", "must be a string, got list"),
        ("node_name: Bad_Name", "node_name", "not a valid node name"),
        ("state_dir: null", "state_dir", "must be a string, got null"),
        ("runtime: podman", "runtime", "'podman' is not one of cri, docker"),
        ("pod_cidr: 10.88.0.1/16", "pod_cidr", "host bits set"),
        ("pod_cidr: banana", "pod_cidr", "not a valid CIDR"),
        ("log_format: xml", "log_format", "not one of console, json"),
        ("proxy_mode: ipvs", "proxy_mode", "'ipvs' is not one of iptables, nftables"),
        ("pause_image: 'a b'", "pause_image", "whitespace"),
        ("runtime_endpoint: localhost", "runtime_endpoint", "not an endpoint URL"),
    ],
)
def test_bad_values_in_file(tmp_path: Path, line: str, key: str, expected: str) -> None:
    path = write(tmp_path, line + "\n")
    err = error_of(flags("--config", str(path)))
    assert err.key == key
    assert err.source == f"config file {path}"
    assert expected in str(err)


def test_bad_cidr_from_env_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEAGENT_POD_CIDR", "10.88.0.0/33")
    err = error_of(flags())
    assert err.key == "pod_cidr"
    assert err.source == "environment variable NODEAGENT_POD_CIDR"
    assert str(err).startswith("pod_cidr: '10.88.0.0/33' is not a valid CIDR")


def test_bad_float_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODEAGENT_RUNTIME_TIMEOUT_S", "soon")
    err = error_of(flags())
    assert err.key == "runtime_timeout_s"
    assert "NODEAGENT_RUNTIME_TIMEOUT_S" in str(err)


def test_unknown_runtime_from_flag() -> None:
    # argparse's choices already refuse it on the command line; load_config must still refuse
    # a Namespace built by other code.
    err = error_of(argparse.Namespace(runtime="podman"))
    assert err.key == "runtime"
    assert err.source == "flag --runtime"


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_proxy_mode_from_file_env_and_flag(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str
) -> None:
    assert load_config(flags()).proxy_mode == "iptables"
    path = write(tmp_path, f"proxy_mode: {mode}\n")
    assert load_config(flags("--config", str(path))).proxy_mode == mode
    assert load_config(flags("--proxy-mode", mode)).proxy_mode == mode
    monkeypatch.setenv("NODEAGENT_PROXY_MODE", mode.upper())
    assert load_config(flags()).proxy_mode == mode


def test_proxy_health_and_nodeport_addresses(tmp_path: Path) -> None:
    defaults = load_config(flags())
    assert defaults.proxy_healthz_bind == "0.0.0.0:10256" and defaults.nodeport_addresses == ()
    given = load_config(
        flags("--proxy-healthz-bind", "", "--nodeport-addresses", "192.168.0.0/16, primary")
    )
    assert given.proxy_healthz_bind == ""
    assert given.nodeport_addresses == ("192.168.0.0/16", "primary")
    path = write(tmp_path, "nodeport_addresses: [10.0.0.0/8]\n")
    assert load_config(flags("--config", str(path))).nodeport_addresses == ("10.0.0.0/8",)
    err = error_of(flags("--nodeport-addresses", "10.0.0.1/8"))
    assert err.key == "nodeport_addresses" and "not a CIDR" in str(err)


def test_flag_wins_even_when_env_is_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only the winning value is parsed: a flag can rescue a broken environment.
    monkeypatch.setenv("NODEAGENT_POD_CIDR", "garbage")
    assert load_config(flags("--pod-cidr", "10.5.0.0/16")).pod_cidr == ipaddress.ip_network(
        "10.5.0.0/16"
    )


def test_status_socket_too_long(tmp_path: Path) -> None:
    err = error_of(flags("--status-socket", "/run/" + "x" * 120))
    assert err.key == "status_socket"
    assert "107 bytes" in str(err)


def test_invalid_hostname_default_points_at_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "my_host")
    err = error_of(flags())
    assert err.key == "node_name"
    assert "--node-name" in err.source and "NODEAGENT_NODE_NAME" in err.source


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- a\n- b\n", "must be a mapping of settings, got list"),
        ("node_name: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    err = error_of(flags("--config", str(path)))
    assert err.key is None
    assert str(err).startswith(f"config file {path}: ")
    assert expected in str(err)


def test_missing_file(tmp_path: Path) -> None:
    err = error_of(flags("--config", str(tmp_path / "absent.yaml")))
    assert "cannot read" in str(err)
    assert "absent.yaml" in str(err)
