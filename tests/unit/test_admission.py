"""The kubelet's admission of API pods (``nodeagent.apiserver.admission``), pure: requests
with sidecars, host ports, taints, DaemonSet affinity, reasons in upstream's order; and the
deletions whose grace period a later DELETE shortened."""

from __future__ import annotations

import dataclasses
from typing import Any

from nodeagent.apiserver import admission
from nodeagent.apiserver.pods import Deletion, read_pods, shortened
from nodeagent.model.pod import Pod, PodSpec, PodUID
from nodeagent.model.validate import parse_pod

NODE = "n1"
NODE_VIEW = admission.NodeView(
    name=NODE,
    labels={"kubernetes.io/hostname": NODE, "disk": "ssd"},
    cpu_millis=2000,
    memory_bytes=4 * 2**30,
    pods=110,
)
# What the DaemonSet controller gives every pod it makes (AddOrUpdateDaemonPodTolerations).
DAEMONSET_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
    {
        "key": "node.kubernetes.io/network-unavailable",
        "operator": "Exists",
        "effect": "NoSchedule",
    },
]
NOT_READY = (
    admission.Taint("node.kubernetes.io/not-ready", "", "NoSchedule"),
    admission.Taint("node.kubernetes.io/not-ready", "", "NoExecute"),
)


def container(name: str = "c", *, cpu: str | None = None, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "image": "busybox:1.36", **fields}
    if cpu is not None:
        body["resources"] = {"requests": {"cpu": cpu}}
    return body


def api_pod(
    name: str,
    *,
    created: str = "2026-01-01T00:00:00Z",
    containers: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "creationTimestamp": created,
            "resourceVersion": "7",
        },
        "spec": {"nodeName": NODE, "containers": containers or [container()], **spec},
        "status": {"phase": "Pending"},
    }


def parsed(obj: dict[str, Any]) -> Pod:
    return parse_pod(obj, source="api", node_name=NODE)


def verdicts(
    *pods: dict[str, Any], node: admission.NodeView = NODE_VIEW
) -> dict[str, tuple[str, str]]:
    """name -> ("run", "") or (reason, message), admitted oldest first as the link does."""

    def check(pod, obj, admitted):  # type: ignore[no-untyped-def]
        return admission.check(pod, obj, node, admitted)

    api = read_pods(pods, node_name=NODE, running=lambda _: False, admit=check)
    out = {key.split("/")[1]: ("run", "") for key in api.run}
    out.update({u[4:]: (r.reason, r.message) for u, r in api.reject.items()})
    return out


# --- requests ------------------------------------------------------------------------------


def test_sidecar_requests_add_to_the_app_containers_and_inits_take_the_peak() -> None:
    sidecar = container("proxy", cpu="200m", restartPolicy="Always")
    setup = container("setup", cpu="500m")
    app = [container("app", cpu="100m")]
    # The sidecar starts first and keeps running: setup runs beside it (200 + 500).
    first = parsed(api_pod("a", containers=app, initContainers=[sidecar, setup]))
    assert admission.pod_request(first, "cpu") == 700
    # Setup runs alone, then the sidecar joins the app for good (100 + 200).
    later = parsed(api_pod("b", containers=app, initContainers=[setup, sidecar]))
    assert admission.pod_request(later, "cpu") == 500
    big_app = [container("app", cpu="900m")]
    steady = parsed(api_pod("c", containers=big_app, initContainers=[setup, sidecar]))
    assert admission.pod_request(steady, "cpu") == 1100
    # Two regular inits run one at a time: the larger counts, not the sum.
    inits = [container("i1", cpu="300m"), container("i2", cpu="400m")]
    assert admission.pod_request(parsed(api_pod("d", initContainers=inits)), "cpu") == 400


def test_sidecars_count_against_allocatable() -> None:
    sidecar = container("proxy", cpu="1500m", restartPolicy="Always")
    result = verdicts(
        api_pod("first", containers=[container(cpu="400m")], created="2026-01-01T00:00:01Z"),
        api_pod(
            "meshed",
            containers=[container(cpu="200m")],
            initContainers=[sidecar],
            created="2026-01-01T00:00:02Z",
        ),
    )
    assert result["first"] == ("run", "")
    assert result["meshed"] == (
        "OutOfcpu",
        "Node didn't have enough resource: cpu, requested: 1700, used: 400, capacity: 2000",
    )


def test_out_of_pods_names_requested_used_and_capacity() -> None:
    small = dataclasses.replace(NODE_VIEW, pods=1)
    result = verdicts(
        api_pod("a", created="2026-01-01T00:00:01Z"),
        api_pod("b", created="2026-01-01T00:00:02Z"),
        node=small,
    )
    assert result["b"] == (
        "OutOfpods",
        "Node didn't have enough resource: pods, requested: 1, used: 1, capacity: 1",
    )


def test_resources_are_judged_before_affinity_as_upstream_orders_them() -> None:
    both = api_pod("both", containers=[container(cpu="3")], nodeSelector={"disk": "hdd"})
    assert verdicts(both)["both"][0] == "OutOfcpu"


# --- host ports ----------------------------------------------------------------------------


def ports(*entries: dict[str, Any]) -> list[dict[str, Any]]:
    return [container(ports=list(entries))]


def test_a_taken_host_port_rejects_the_later_pod() -> None:
    def pod(name: str, second: int, **port: Any) -> dict[str, Any]:
        body = {"containerPort": 80, "hostPort": 8080, **port}
        return api_pod(name, containers=ports(body), created=f"2026-01-01T00:00:{second:02}Z")

    result = verdicts(
        pod("first", 1),
        pod("same", 2),
        pod("udp", 3, protocol="UDP"),
        pod("other-port", 4, hostPort=8081),
        pod("one-ip", 5, hostPort=9090, hostIP="10.0.0.1"),
        pod("other-ip", 6, hostPort=9090, hostIP="10.0.0.2"),
        pod("all-ips", 7, hostPort=9090),
    )
    assert result["first"] == ("run", "")
    assert result["same"] == (
        "NodePorts",
        "Predicate NodePorts failed: node(s) didn't have free ports for the requested pod ports",
    )
    assert result["udp"] == result["other-port"] == ("run", "")
    assert result["one-ip"] == result["other-ip"] == ("run", "")
    assert result["all-ips"][0] == "NodePorts"  # 0.0.0.0 takes the port on every address


def test_host_network_container_ports_are_host_ports() -> None:
    web = {"containerPort": 8080}
    result = verdicts(
        api_pod("host", containers=ports(web), hostNetwork=True, created="2026-01-01T00:00:01Z"),
        api_pod(
            "mapped",
            containers=ports({"containerPort": 80, "hostPort": 8080}),
            created="2026-01-01T00:00:02Z",
        ),
        api_pod("plain", containers=ports(web), created="2026-01-01T00:00:03Z"),
    )
    assert result == {
        "host": ("run", ""),
        "mapped": (admission.PORTS_REASON, admission.PORTS_MESSAGE),
        "plain": ("run", ""),  # a container port alone takes nothing on the host
    }


# --- taints and DaemonSet pods -------------------------------------------------------------


def daemonset_pod(name: str, node: str = NODE) -> dict[str, Any]:
    term = {
        "matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}],
    }
    required = {"nodeSelectorTerms": [term]}
    return api_pod(
        name,
        tolerations=DAEMONSET_TOLERATIONS,
        affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}},
        hostNetwork=True,
    )


def test_a_daemonset_pod_runs_on_a_node_that_is_not_ready() -> None:
    not_ready = dataclasses.replace(NODE_VIEW, taints=NOT_READY)
    result = verdicts(daemonset_pod("agent"), api_pod("plain"), node=not_ready)
    assert result["agent"] == ("run", "")
    assert result["plain"] == (
        "TaintToleration",
        "Predicate TaintToleration failed: node(s) had taints that the pod didn't tolerate",
    )


def test_a_daemonset_pod_for_another_node_is_rejected() -> None:
    assert verdicts(daemonset_pod("agent", node="n2"))["agent"][0] == "NodeAffinity"


def test_only_no_execute_taints_count_and_tolerations_match_as_upstream() -> None:
    taint = admission.Taint("dedicated", "db", "NoExecute")
    check = admission.untolerated_taint
    assert check([], [admission.Taint("dedicated", "db", "NoSchedule")]) is None
    assert check([], [taint]) == taint
    assert check([{"key": "dedicated", "value": "db"}], [taint]) is None  # Equal, any effect
    assert check([{"key": "dedicated", "value": "web"}], [taint]) == taint
    assert check([{"key": "dedicated", "operator": "Exists"}], [taint]) is None
    assert check([{"operator": "Exists"}], [taint]) is None  # an empty key tolerates all
    assert check([{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}], [taint])


def test_the_node_view_reads_labels_and_taints_from_the_node() -> None:
    node = {
        "metadata": {"name": NODE, "labels": {"gpu": "yes"}},
        "spec": {"taints": [{"key": "k", "value": "v", "effect": "NoExecute"}, "junk"]},
    }
    allocatable = {"cpu": "2", "memory": "1Gi", "pods": "110"}
    view = admission.NodeView.from_node(
        NODE, node, default_labels={"registered": "yes"}, allocatable=allocatable
    )
    assert view.labels == {"gpu": "yes"}
    assert view.taints == (admission.Taint("k", "v", "NoExecute"),)
    assert (view.cpu_millis, view.memory_bytes, view.pods) == (2000, 2**30, 110)
    before = admission.NodeView.from_node(
        NODE, None, default_labels={"registered": "yes"}, allocatable=allocatable
    )
    assert before.labels == {"registered": "yes"} and before.taints == ()


def test_a_pod_os_label_other_than_linux_is_refused() -> None:
    windows = api_pod("win")
    windows["metadata"]["labels"] = {"kubernetes.io/os": "windows"}
    assert verdicts(windows)["win"] == (admission.OS_REASON, admission.OS_MESSAGE)


# --- shortened deletions -------------------------------------------------------------------


def test_only_a_shorter_grace_period_changes_a_deletion_under_way() -> None:
    def deletion(uid: str, grace: int) -> Deletion:
        pod = Pod(uid=PodUID(uid), name=uid, namespace="default", spec=PodSpec(containers=()))
        return Deletion(pod, grace)

    started = {PodUID("a"): 30, PodUID("b"): 30, PodUID("c"): 5}
    wanted = {
        PodUID("a"): deletion("a", 5),  # a second DELETE with a shorter period
        PodUID("b"): deletion("b", 30),  # the same one again
        PodUID("c"): deletion("c", 30),  # longer: the API never lengthens it anyway
        PodUID("d"): deletion("d", 1),  # not started yet: a new deletion, not a change
    }
    assert shortened(started, wanted) == {PodUID("a"): wanted[PodUID("a")]}
