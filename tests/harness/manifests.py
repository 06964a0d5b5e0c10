"""Pods (and a Service) the tests use, written once.

The sleeper is the integration suites' workhorse: a busybox container that idles until TERM
and then exits at once, so a test's pod stops in well under its one-second grace period.
``full_pod`` and ``full_service`` use every field the agent honours: the validation tests
and the fuzzers start from them.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["SLEEP", "full_pod", "full_service", "static_pod_yaml"]

# Exits on TERM at once; the loop (not one long sleep) lets the trap run without delay.
SLEEP = "trap 'exit 0' TERM; while true; do sleep 1; done"


def static_pod_yaml(
    name: str,
    *,
    script: str = SLEEP,
    policy: str = "Always",
    grace: int = 1,
    labels: str = "",
    container: str = "",
) -> str:
    """A static pod: one busybox container ``main`` running ``script`` (by default the
    sleeper) under restart ``policy``.

    ``labels`` is a YAML flow mapping (``{app: web}``). ``container`` is more YAML for the
    container, each line indented by six spaces; pod spec fields may follow it, indented by two.
    """
    meta = f"{{name: {name}, labels: {labels}}}" if labels else f"{{name: {name}}}"
    # A JSON string is a YAML double-quoted scalar: any script is quoted right.
    return f"""apiVersion: v1
kind: Pod
metadata: {meta}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: {grace}
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", {json.dumps(script)}]
{container}"""


def full_pod() -> dict[str, Any]:
    """A pod that uses every field we honour."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "web",
            "namespace": "shop",
            "labels": {"app": "web"},
            "annotations": {"note": "x"},
            "resourceVersion": "12",  # ignored, not rejected
        },
        "status": {"phase": "Pending"},  # ignored, as are the scheduling hints below
        "spec": {
            "nodeSelector": {"disk": "ssd"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "volumes": [
                {"name": "html", "emptyDir": {}},
                {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                {"name": "host", "hostPath": {"path": "/srv", "type": "DirectoryOrCreate"}},
            ],
            "initContainers": [
                {
                    "name": "setup",
                    "image": "busybox:1.36",
                    "command": ["sh", "-c", "echo $(POD) > /html/index.html"],
                    "env": [
                        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                    ],
                    "volumeMounts": [{"name": "html", "mountPath": "/html"}],
                }
            ],
            "containers": [
                {
                    "name": "web",
                    "image": "busybox",
                    "command": ["httpd", "-f"],
                    "args": ["-p", "8080"],
                    "workingDir": "/html",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [
                        {"name": "MODE", "value": "prod"},
                        {
                            "name": "NODE",
                            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
                        },
                        {
                            "name": "MEM",
                            "valueFrom": {
                                "resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}
                            },
                        },
                    ],
                    "resources": {
                        "limits": {"cpu": "500m", "memory": "128Mi"},
                        "requests": {"cpu": 0.25, "memory": "64Mi"},
                    },
                    "volumeMounts": [
                        {"name": "html", "mountPath": "/html", "readOnly": True},
                        {"name": "cache", "mountPath": "/cache", "subPath": "web"},
                    ],
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                    "readinessProbe": {
                        "tcpSocket": {"port": 8080},
                        "periodSeconds": 2,
                        "successThreshold": 2,
                    },
                    "startupProbe": {
                        "exec": {"command": ["true"]},
                        "failureThreshold": 30,
                        "terminationGracePeriodSeconds": 5,
                    },
                    "lifecycle": {
                        "postStart": {"exec": {"command": ["touch", "/tmp/up"]}},
                        "preStop": {"httpGet": {"path": "/quit", "port": 8080}},
                    },
                },
                {"name": "sidecar", "image": "registry.local:5000/tools:latest"},
                {"name": "pinned", "image": "busybox:1.36"},
            ],
        },
    }


def full_service() -> dict[str, Any]:
    """A Service that uses every field we honour."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
        "spec": {
            "type": "NodePort",
            "selector": {"app": "web"},
            "clusterIP": "10.96.0.20",
            "externalIPs": ["192.0.2.10"],
            "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
            "externalTrafficPolicy": "Local",
            "ports": [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                {"name": "dns", "port": 53, "targetPort": 5353, "protocol": "UDP"},
            ],
        },
    }
