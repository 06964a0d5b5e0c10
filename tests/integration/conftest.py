"""Fixtures for integration tests: local images, and private nodes (see tests/harness).

- ``image_archives`` (session): the busybox and pause archives, built once into the
  repository's build/images and reused by later runs.
- ``module_node`` (module): one TestNode per test module; starting one costs about half a
  second (netns, containerd, image import), so modules share it.
- ``node`` (function): the module's node, reset after each test (every pod, container and
  task removed), so tests see an empty node without paying for a new one.
- ``make_node`` (function): a factory for extra nodes (multi-node tests), closed afterwards.
- ``runtime`` (module, parametrized "cri" and "docker") and ``runtime_target`` (function): the
  runtime an agent under test drives. A module whose tests take ``runtime_target`` runs them
  once per runtime: on the node's containerd, then on a dockerd started in the node (one per
  module, reset after each test). Docker runs are skipped, with the reason, where dockerd or
  the docker CLI is missing. A test marked ``runtime_independent`` (the runtime plays no part
  in what it checks) runs on containerd only: its Docker run is deselected, so it costs
  nothing.
- ``link`` (module), ``api`` and ``admin`` (function): cluster mode: a veth link into the
  module's node, the test API server on its root end, and an admin client of it. Cluster
  modules override ``agent`` with ``tests.harness.cluster.cluster_agent``.

Tests under this directory are marked ``integration`` and skipped, with the reason, when the
machine cannot run them (not root, or containerd, runc, ip, nsenter or the CNI plugins
missing).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from lightkube import AsyncClient

from nodeagent import devenv, localimages
from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode
from tests.harness.agent import Agent, RuntimeTarget
from tests.harness.cluster import NODE_NAME, Link, admin_client, veth_link
from tests.harness.dockerd import DockerDaemon

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / "build" / "images"
HERE = Path(__file__).resolve().parent
REQUIRED_TOOLS = ("containerd", "ctr", "runc", "containerd-shim-runc-v2", "ip", "nsenter")
DOCKER_TOOLS = ("dockerd", "docker")
RUNTIMES = ("cri", "docker")


def unmet_requirement() -> str | None:
    """Why integration tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "integration tests need root (network namespaces, containerd)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"integration tests need {', '.join(missing)} (see tools/setup-host.sh)"
    if not localimages.DEFAULT_BUSYBOX.is_file():
        return f"integration tests need {localimages.DEFAULT_BUSYBOX} (busybox-static)"
    if not (devenv.default_cni_bin_dir() / "bridge").is_file():
        return "integration tests need the CNI plugins (containernetworking-plugins)"
    return None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "runtime_independent: the runtime plays no part; run on containerd only, not Docker",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = unmet_requirement()
    # The proxy mode does not depend on the runtime: the nftables mode runs on containerd only,
    # and so does a test marked runtime_independent (deselected before its fixtures start).
    dropped = [
        item
        for item in items
        if _params(item).get("runtime", "cri") != "cri"
        and (
            _params(item).get("proxy_mode", "iptables") != "iptables"
            or item.get_closest_marker("runtime_independent") is not None
        )
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in dropped]
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.integration)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))


def _params(item: pytest.Item) -> dict[str, object]:
    callspec = getattr(item, "callspec", None)
    return dict(callspec.params) if callspec is not None else {}


@pytest.fixture(scope="session")
def image_archives() -> dict[str, Path]:
    """Image name -> archive; built on first use, cached across runs."""
    return localimages.build_all(localimages.BuildOptions(build_dir=BUILD_DIR))


@pytest.fixture(scope="module")
def module_node(
    image_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestNode]:
    node = TestNode.start(tmp_path_factory.mktemp("node"), images=image_archives)
    try:
        yield node
    finally:
        node.close()


@pytest.fixture
def node(module_node: TestNode) -> Iterator[TestNode]:
    yield module_node
    module_node.reset()


@pytest.fixture
def make_node(
    image_archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[], TestNode]]:
    """Start extra nodes on demand; every one is closed after the test."""
    started: list[TestNode] = []

    def make() -> TestNode:
        node = TestNode.start(tmp_path_factory.mktemp("node"), images=image_archives)
        started.append(node)
        return node

    yield make
    errors = []
    for node in started:
        try:
            node.close()
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="module", params=RUNTIMES)
def runtime(request: pytest.FixtureRequest) -> str:
    """Which runtime this module's agents drive (the module runs once per runtime)."""
    return str(request.param)


@pytest.fixture(scope="module")
def module_runtime(
    runtime: str, module_node: TestNode, image_archives: dict[str, Path]
) -> Iterator[RuntimeTarget]:
    if runtime == "cri":
        yield RuntimeTarget.cri(module_node)
        return
    missing = [tool for tool in DOCKER_TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"docker runs need {', '.join(missing)} (Debian's docker.io)")
    daemon = DockerDaemon.start(module_node, images=image_archives)
    try:
        yield RuntimeTarget.for_docker(module_node, daemon)
    finally:
        daemon.close()


@pytest.fixture
def runtime_target(module_runtime: RuntimeTarget, node: TestNode) -> Iterator[RuntimeTarget]:
    """The module's runtime, emptied after each test (before the node resets containerd)."""
    yield module_runtime
    module_runtime.reset()


@pytest.fixture
def agent(node: TestNode, runtime_target: RuntimeTarget) -> Iterator[Agent]:
    """A running agent on the module's node and runtime, with an empty manifest directory."""
    a = Agent(node, runtime=runtime_target)
    for old in a.manifests.iterdir():
        old.unlink()
    a.start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def link(module_node: TestNode) -> Iterator[Link]:
    with veth_link(module_node) as made:
        yield made


@pytest.fixture
async def api(link: Link, tmp_path: Path) -> AsyncIterator[ApiServerProcess]:
    """The test API server on the link's root end, with a kubeconfig for NODE_NAME."""
    server = ApiServerProcess(tmp_path / "api", host=link.host_ip)
    server.node_kubeconfig(NODE_NAME)
    async with server:
        yield server


@pytest.fixture
async def admin(api: ApiServerProcess) -> AsyncIterator[AsyncClient]:
    client = admin_client(api)
    yield client
    await client.close()
