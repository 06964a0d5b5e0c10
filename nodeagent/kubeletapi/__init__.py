"""The kubelet's HTTPS API (port 10250): what kube-apiserver proxies ``kubectl logs``,
``kubectl exec``, ``kubectl top`` (through metrics-server) and ``nodes/{name}/proxy/...`` to.

    server.py    the daemon's entry: serving certificate, checks and routes, start/close
    certs.py     self-signed serving certificate, TLS context (client certificates)
    wire.py      HTTP/1.1 over TLS, one request per connection, bounded and timed
    auth.py      authentication (client cert, TokenReview, anonymous), authorization
                 (SubjectAccessReview with the kubelet's verbs and subresources), caches
    handlers.py  routes: /healthz, /pods, /containerLogs, /stats/summary, /metrics/resource
    logs.py      PodLogOptions and the log stream (follow, previous, tail, since, limit)
    streams.py   exec, attach, port-forward: relayed to the CRI runtime's streaming server
    stats.py     the Summary API and /metrics/resource from the counters of
    cgroups.py   the cgroup filesystem and /proc

It reads the agent (pods, sandboxes, log files) and changes nothing but what a client runs
through exec; the API client
it needs for reviews is given as a function, so this package does not import the cluster
mode's code.
"""
