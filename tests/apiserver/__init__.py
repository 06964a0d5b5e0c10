"""A test Kubernetes API server: the real HTTP(S)/JSON wire protocol, in memory.

There is no kube-apiserver binary on the test machines, so node-agent tests that join a
control plane run against this one, in-process (``async with ApiServer() as api``) or as a
process (``python -m tests.apiserver``, see ``process.py``). Each module's docstring names the
upstream documents it follows and what it simplifies:

    resources.py    served kinds, discovery documents
    store.py        objects, resourceVersion, conflicts, subresources, graceful deletion
    admission.py    defaults, validation, ServiceAccount admission, pod immutability
    storage.py      PersistentVolumes and PersistentVolumeClaims: defaults, validation
    podstatus.py    pod status IP conversion and ValidatePodStatusUpdate
    authz.py        Node authorizer, RBAC ClusterRoles/Bindings (system:node-proxier)
    noderestriction.py  what a node credential may write (NodeRestriction)
    allocators.py   ClusterIPs and NodePorts
    watch.py        history, watch streams, bookmarks, 410 Gone
    selectors.py    label and field selectors
    patch.py        merge, strategic merge and JSON patches
    controllers.py  namespaces, EndpointSlices, the kubernetes Service
    ipam.py         node IPAM: podCIDR assigned a moment after a Node is created
    subresources.py TokenRequest, Binding, ephemeral containers, bearer tokens
    handlers.py     the verbs over HTTP
    faults.py       fault injection
    kubelet.py      TokenReview, SubjectAccessReview, proxying pods/log and nodes/proxy
    tls.py          CA, certificates, kubeconfig files
    server.py       the server: lifecycle, authentication, authorization, routing, test hooks
"""

from tests.apiserver.faults import FaultRule, Faults
from tests.apiserver.server import ApiServer, RequestRecord
from tests.apiserver.store import Store

__all__ = ["ApiServer", "FaultRule", "Faults", "RequestRecord", "Store"]
