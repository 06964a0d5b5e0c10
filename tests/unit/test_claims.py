"""PersistentVolumeClaims resolved for this node (apiserver/claims.py): pure decisions."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.apiserver import claims
from nodeagent.apiserver.admission import NodeView
from nodeagent.model.refs import RefError

Obj = dict[str, Any]
NODE = NodeView.from_allocatable("n1", {"kubernetes.io/hostname": "n1"}, {})


def pod(*volumes: Obj, uid: str = "u1") -> Obj:
    mounts = [{"name": v["name"], "mountPath": f"/{v['name']}"} for v in volumes]
    return {
        "metadata": {"name": "web", "namespace": "default", "uid": uid},
        "spec": {
            "containers": [{"name": "c", "image": "i", "volumeMounts": mounts}],
            "volumes": list(volumes),
        },
    }


def claim(name: str = "data", *, pv: str = "pv1", phase: str = "Bound", **meta: Any) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "default", "uid": "c1", **meta},
        "spec": {"volumeName": pv, "accessModes": ["ReadWriteOnce"]},
        "status": {"phase": phase},
    }


def pv(
    source: Obj, *, claim_uid: str = "c1", modes: tuple[str, ...] = ("ReadWriteOnce",), **spec: Any
) -> Obj:
    ref = {"namespace": "default", "name": "data", "uid": claim_uid}
    return {
        "metadata": {"name": "pv1"},
        "spec": {**source, "claimRef": ref, "accessModes": list(modes), **spec},
    }


def local_affinity(node: str) -> Obj:
    expr = {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
    return {"required": {"nodeSelectorTerms": [{"matchExpressions": [expr]}]}}


PVC_VOLUME = {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}


def message(call: Any, *args: Any) -> str:
    with pytest.raises(RefError) as caught:
        call(*args)
    assert caught.value.reason == "ContainerCreating"
    return caught.value.message


def test_claim_uses_names_the_ephemeral_claim_after_pod_and_volume() -> None:
    eph = {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}
    ro = {"name": "ro", "persistentVolumeClaim": {"claimName": "c", "readOnly": True}}
    uses = claims.claim_uses(pod(PVC_VOLUME, eph, ro))
    assert uses == [
        claims.ClaimUse("data", "data", False, ephemeral=False),
        claims.ClaimUse("scratch", "web-scratch", False, ephemeral=True),
        claims.ClaimUse("ro", "c", True, ephemeral=False),
    ]
    assert not claims.uses_claims(pod({"name": "e", "emptyDir": {}}))


def test_a_missing_or_unbound_claim_waits_with_the_kubelets_words() -> None:
    (use,) = claims.claim_uses(pod(PVC_VOLUME))
    assert message(claims.check_claim, use, pod(), None) == (
        'persistentvolumeclaim "data" not found'
    )
    pending = claim(pv="", phase="Pending")
    assert message(claims.check_claim, use, pod(), pending) == (
        'persistentvolumeclaim "data" not bound'
    )
    deleting = claim(deletionTimestamp="2026-12-06T00:00:00Z")
    assert "is being deleted" in message(claims.check_claim, use, pod(), deleting)
    assert claims.check_claim(use, pod(), claim())[1] == "pv1"


def test_an_ephemeral_claim_must_be_owned_by_the_pod() -> None:
    eph = {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}}
    (use,) = claims.claim_uses(pod(eph))
    stranger = claim("web-scratch")
    assert message(claims.check_claim, use, pod(eph), stranger) == (
        "PVC default/web-scratch was not created for pod default/web (pod is not owner)"
    )
    owned = claim("web-scratch", ownerReferences=[{"uid": "u1", "controller": True}])
    assert claims.check_claim(use, pod(eph), owned)[1] == "pv1"


def test_the_pv_must_point_back_at_the_claim() -> None:
    (use,) = claims.claim_uses(pod(PVC_VOLUME))
    assert message(claims.resolve, use, claim(), None, NODE) == ('persistentvolume "pv1" not found')
    unbound = pv({"hostPath": {"path": "/d"}})
    del unbound["spec"]["claimRef"]
    assert "nil pv.Spec.ClaimRef" in message(claims.resolve, use, claim(), unbound, NODE)
    other = pv({"hostPath": {"path": "/d"}}, claim_uid="c2")
    assert message(claims.resolve, use, claim(), other, NODE) == (
        'found PV object "pv1" but its pv.Spec.ClaimRef.UID ("c2") does not point to '
        'claim.UID ("c1")'
    )


def test_a_hostpath_pv_is_a_hostpath_of_its_directory() -> None:
    (use,) = claims.claim_uses(pod(PVC_VOLUME))
    mount = claims.resolve(
        use, claim(), pv({"hostPath": {"path": "/d", "type": "Directory"}}), NODE
    )
    assert (mount.path, mount.path_type, mount.read_only) == ("/d", "Directory", False)
    assert not mount.fs_group_applies and not mount.once_pod
    doc = claims.apply(pod(PVC_VOLUME), {"data": mount})
    assert doc["spec"]["volumes"] == [
        {"name": "data", "hostPath": {"path": "/d", "type": "Directory"}}
    ]
    assert "readOnly" not in doc["spec"]["containers"][0]["volumeMounts"][0]
    assert claims.in_use([mount]) == []  # hostPath is not reported, as upstream


def test_read_only_from_the_pod_volume_or_a_read_only_many_pv() -> None:
    ro = {"name": "data", "persistentVolumeClaim": {"claimName": "data", "readOnly": True}}
    (use,) = claims.claim_uses(pod(ro))
    mount = claims.resolve(use, claim(), pv({"hostPath": {"path": "/d"}}), NODE)
    assert mount.read_only
    doc = claims.apply(pod(ro), {"data": mount})
    assert doc["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] is True
    (use,) = claims.claim_uses(pod(PVC_VOLUME))
    rox = pv({"hostPath": {"path": "/d"}}, modes=("ReadOnlyMany",))
    assert claims.resolve(use, claim(), rox, NODE).read_only


def test_a_local_pv_for_another_node_is_refused_naming_the_field() -> None:
    (use,) = claims.claim_uses(pod(PVC_VOLUME))
    elsewhere = pv({"local": {"path": "/d"}}, nodeAffinity=local_affinity("n2"))
    assert message(claims.resolve, use, claim(), elsewhere, NODE) == (
        'MountVolume.NodeAffinity check failed for volume "data" (PersistentVolume "pv1"): '
        'spec.nodeAffinity: no matching NodeSelectorTerms for node "n1"'
    )
    here = pv(
        {"local": {"path": "/d"}}, nodeAffinity=local_affinity("n1"), modes=("ReadWriteOncePod",)
    )
    mount = claims.resolve(use, claim(), here, NODE)
    assert (mount.path_type, mount.fs_group_applies, mount.once_pod) == ("Directory", True, True)
    assert claims.in_use([mount]) == ["kubernetes.io/local-volume/pv1"]


def test_csi_becomes_the_agreed_source_and_others_are_named() -> None:
    (use,) = claims.claim_uses(pod(PVC_VOLUME))
    csi = {
        "csi": {
            "driver": "d.example.com",
            "volumeHandle": "h",
            "readOnly": True,
            "fsType": "ext4",
            "volumeAttributes": {"a": "b"},
        }
    }
    mount = claims.resolve(use, claim(), pv(csi), NODE)
    assert mount.csi is not None and mount.read_only
    assert (mount.csi.driver, mount.csi.volume_handle, mount.csi.fs_type) == (
        "d.example.com",
        "h",
        "ext4",
    )
    assert dict(mount.csi.volume_attributes) == {"a": "b"}
    assert claims.in_use([mount]) == ["kubernetes.io/csi/d.example.com^h"]
    nfs = pv({"nfs": {"server": "s", "path": "/"}})
    assert message(claims.resolve, use, claim(), nfs, NODE) == (
        'PersistentVolume "pv1": spec.nfs: volume source not supported by nodeagent '
        "(hostPath, local and csi are)"
    )
    block = pv({"local": {"path": "/dev/sdb"}}, volumeMode="Block")
    assert "spec.volumeMode Block" in message(claims.resolve, use, claim(), block, NODE)
