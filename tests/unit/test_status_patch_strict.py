"""The agent's status patches against the strict test API server's merge and validation.

A pod whose sandbox is recreated gets a new IP. kube-apiserver merges a ``podIPs`` list by
``ip`` and puts an IP new to the list BEFORE the live one, then refuses two IPv4 podIPs (422),
so the patch must delete the old IP (``$patch: delete`` with ``$setElementOrder``, as the
kubelet's two-way diff does) or the pod's API status freezes. The status writer sends that diff
(``nodeagent.apiserver.statuspatch``).
"""

from __future__ import annotations

from nodeagent.apiserver.statuswriter import status_patch
from tests.apiserver.patch import strategic_merge_patch
from tests.apiserver.podstatus import convert, validate_update


def test_a_new_pod_ip_replaces_the_old_one_on_a_strict_server() -> None:
    old = {
        "phase": "Running",
        "qosClass": "BestEffort",
        "podIP": "10.88.0.5",
        "podIPs": [{"ip": "10.88.0.5"}],
    }
    new = {**old, "podIP": "10.88.0.9", "podIPs": [{"ip": "10.88.0.9"}]}
    live = {"metadata": {"name": "p"}, "spec": {}, "status": old}
    merged = strategic_merge_patch(live, {"status": status_patch(old, new)}, "Pod")
    convert(merged["status"])
    assert validate_update(live, merged) == []
    assert merged["status"]["podIPs"] == [{"ip": "10.88.0.9"}]
