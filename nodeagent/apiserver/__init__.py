"""Cluster mode: the agent's side of a real Kubernetes control plane.

What a kubelet (and kube-proxy's watch) does against the API server, one role per module:

    client.py       kubeconfig -> a lightkube AsyncClient (typed writes) plus the raw HTTP
                    client of the same connection (list/watch with bookmarks, delete options);
                    every failure becomes an ``ApiFailure``
    reflector.py    list+watch one collection into a local copy: resume, bookmarks, 410, backoff
    pods.py         (pure) the API's pods for this node -> run, delete, reject, hold; merge
                    with the static pods
    admission.py    (pure) the kubelet's admission: resources, pod count, node affinity,
                    host ports, NoExecute taints
    ownnode.py      our own Node as admission reads it: watched, read again on demand
    refs.py         (pure) ConfigMap, Secret, downward API and token references -> a pod the
                    pod manager can run, and the files of its volumes
    claims.py       (pure) PersistentVolumeClaims -> the PV directory to mount, or why not
    podrefs.py      fetching those references (claims and PVs too), writing the files,
                    keeping them current
    node.py         Node registration and watch (podCIDR), node status, the Lease heartbeat
    statuspatch.py  (pure) a pod status patch: the kubelet's two-way strategic merge patch
    statuswriter.py pod status patches: only what changed, coalesced, retried
    podstatuses.py  (pure) what the writer is told: per API pod (and mirror pod) its status
    mirror.py       mirror pods for static pods
    events.py       (pure) Events from status changes; no client, so standalone agents use it
    podevents.py    which pods' statuses to compare, and when: the events of this node's pods
    eventsender.py  Events sent to the API, aggregated and rate-limited
    services.py     (pure) Services and EndpointSlices -> the proxy's endpoints
    deletion.py     pods deleted through the API: terminate, final status, DELETE
    cluster.py      the wiring: one ``ClusterLink`` the daemon builds and supervises; it
                    reads the API's pods and deletes them, and hands the pod manager and the
                    image manager what they need through their methods

Data still flows one way: the API's pods join the manifest directory's in one desired set
for the pod manager, and its Services join theirs for the proxy; the pod workers' statuses
flow back out through the status writer and the events.
"""
