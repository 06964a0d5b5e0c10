"""Pod spec coverage, end to end on a real runtime: documented examples of ConfigMap, Secret,
downwardAPI and subPath volumes, native sidecars, activeDeadlineSeconds, and the kinds the
manifest directory does not run. Each test checks the outcome the Kubernetes docs describe.

Every test runs on containerd and on Docker Engine (``runtime_target``), but the one marked
``runtime_independent`` (a kind refused by the manifest directory): containerd only.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.apiserver.process import ApiServerProcess
from tests.harness import TestNode, cluster, wait_for
from tests.harness.agent import Agent, container_status, is_ready, waiting_reason
from tests.harness.manifests import SLEEP


def pod_yaml(name: str, body: str) -> str:
    return f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{body}"


def logs(agent: Agent, pod: str, container: str = "main") -> str:
    argv = [sys.executable, "-m", "nodeagent", "logs", pod, "-c", container]
    argv += ["--status-socket", str(agent.socket)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return result.stdout if result.returncode == 0 else ""


def wait_logs(agent: Agent, pod: str, marker: str, container: str = "main") -> str:
    """The container's output once it has printed ``marker``."""
    return str(
        wait_for(
            lambda: (out := logs(agent, pod, container)) and marker in out and out,
            20,
            message=lambda: (
                f"{pod}/{container} printed {marker!r}: {logs(agent, pod, container)!r}"
                f"\n{agent.log_tail()}"
            ),
        )
    )


def section(output: str, name: str) -> str:
    """The lines between ``== name`` and the next ``== `` marker of a container's output."""
    lines = output.splitlines()
    start = lines.index(f"== {name}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("== ")), len(lines))
    return "\n".join(lines[start:end])


# -- downward API (the "expose pod information through files" task of the docs) -----------

DOWNWARD = """\
  labels: {zone: us-est-coast, cluster: test-cluster1, rack: rack-22}
  annotations: {build: two, builder: john-doe}
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c"]
      args:
        - for f in labels annotations podname; do echo "== $f"; cat /etc/podinfo/$f; echo;
          done; echo "== mode"; stat -L -c %a /etc/podinfo/podname; echo "== end";
          trap 'exit 0' TERM; while true; do sleep 1; done
      volumeMounts: [{name: podinfo, mountPath: /etc/podinfo}]
  volumes:
    - name: podinfo
      downwardAPI:
        items:
          - {path: labels, fieldRef: {fieldPath: metadata.labels}}
          - {path: annotations, fieldRef: {fieldPath: metadata.annotations}}
          - {path: podname, fieldRef: {fieldPath: metadata.name}, mode: 0400}
"""


def test_downward_api_volume_files_have_the_documented_content(
    node: TestNode, agent: Agent
) -> None:
    agent.write_manifest("podinfo.yaml", pod_yaml("kubernetes-downwardapi-volume", DOWNWARD))
    pod = agent.wait_pod("kubernetes-downwardapi-volume", is_ready, what="ready")
    out = wait_logs(agent, "kubernetes-downwardapi-volume", "== end")
    assert section(out, "labels") == 'cluster="test-cluster1"\nrack="rack-22"\nzone="us-est-coast"'
    uid = pod["metadata"]["uid"]
    assert section(out, "annotations") == (
        f'build="two"\nbuilder="john-doe"\nkubernetes.io/config.hash="{uid}"\n'
        'kubernetes.io/config.source="file"'
    )
    assert section(out, "podname") == "kubernetes-downwardapi-volume"
    assert section(out, "mode") == "400"


# -- ConfigMap: a volume and env from a ConfigMap manifest in the directory ---------------

CONFIG_MAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: game-demo}
data:
  player_initial_lives: "3"
  ui_properties_file_name: user-interface.properties
  game.properties: |
    enemy.types=aliens,monsters
    player.maximum-lives=5
"""

CONFIG_POD = """\
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c"]
      args:
        - echo "== env"; echo "$PLAYER_INITIAL_LIVES $UI_PROPERTIES_FILE_NAME";
          echo "== files"; ls /config; echo "== game"; cat /config/game.properties;
          echo "== ro"; touch /config/x 2>/dev/null && echo writable || echo read-only;
          echo "== end"; trap 'exit 0' TERM; while true; do sleep 1; done
      env:
        - name: PLAYER_INITIAL_LIVES
          valueFrom: {configMapKeyRef: {name: game-demo, key: player_initial_lives}}
        - name: UI_PROPERTIES_FILE_NAME
          valueFrom: {configMapKeyRef: {name: game-demo, key: ui_properties_file_name}}
      volumeMounts: [{name: config, mountPath: /config, readOnly: true}]
  volumes:
    - name: config
      configMap:
        name: game-demo
        items: [{key: game.properties, path: game.properties}]
"""

# The same pod with no volume. Its `ls` and `cat` fail, and their errors go to stdout: the
# runtime logs stdout and stderr from two pipes, so a line on stderr may land before an
# earlier line on stdout and split a section.
CONFIG_ENV_ONLY_POD = (
    CONFIG_POD.replace(
        "      volumeMounts: [{name: config, mountPath: /config, readOnly: true}]\n", ""
    )
    .split("  volumes:")[0]
    .replace("ls /config;", "ls /config 2>&1;")
    .replace("cat /config/game.properties;", "cat /config/game.properties 2>&1;")
)


def test_configmap_volume_and_env_from_a_configmap_in_the_directory(
    node: TestNode, agent: Agent
) -> None:
    agent.write_manifest("cm.yaml", CONFIG_MAP)
    agent.write_manifest("pod.yaml", pod_yaml("configmap-demo-pod", CONFIG_POD))
    agent.wait_pod("configmap-demo-pod", is_ready, what="ready")
    out = wait_logs(agent, "configmap-demo-pod", "== end")
    assert section(out, "env") == "3 user-interface.properties"
    assert section(out, "files") == "game.properties"
    assert section(out, "game") == "enemy.types=aliens,monsters\nplayer.maximum-lives=5"
    assert section(out, "ro") == "read-only"


def test_pod_waits_for_a_missing_configmap_and_starts_when_it_appears(
    node: TestNode, agent: Agent
) -> None:
    agent.write_manifest("pod.yaml", pod_yaml("waits", CONFIG_ENV_ONLY_POD))

    def config_error(pod: dict[str, Any]) -> bool:
        return waiting_reason(pod, "main") == "CreateContainerConfigError"

    pod = agent.wait_pod("waits", config_error, what="CreateContainerConfigError")
    assert pod["status"]["phase"] == "Pending"
    message = container_status(pod, "main")["state"]["waiting"]["message"]
    assert message == 'configmap "game-demo" not found'
    assert not agent.runtime.sandboxes()  # nothing runs while it waits

    agent.write_manifest("cm.yaml", CONFIG_MAP)
    agent.wait_pod("waits", is_ready, what="ready once the ConfigMap exists")
    out = wait_logs(agent, "waits", "== end")
    assert section(out, "env") == "3 user-interface.properties", (out, agent.pod("waits"))


def test_restarted_container_sees_the_configmap_as_it_is_now(node: TestNode, agent: Agent) -> None:
    body = CONFIG_ENV_ONLY_POD.replace(
        "echo \"== end\"; trap 'exit 0' TERM; while true; do sleep 1; done",
        'echo "== end"; sleep 2; exit 1',
    )
    agent.write_manifest("cm.yaml", CONFIG_MAP)
    agent.write_manifest("pod.yaml", pod_yaml("rereads", body))
    assert section(wait_logs(agent, "rereads", "== end"), "env").startswith("3 ")
    first = agent.pod("rereads") or {}
    agent.write_manifest("cm.yaml", CONFIG_MAP.replace('"3"', '"4"'))

    def restarted(pod: dict[str, Any]) -> bool:
        return int(container_status(pod, "main")["restartCount"]) >= 1

    pod = agent.wait_pod("rereads", restarted, timeout=40, what="restarted")
    assert pod["metadata"]["uid"] == first["metadata"]["uid"]  # the same pod, not replaced

    def new_env() -> str:
        out = logs(agent, "rereads")
        env = section(out, "env") if "== end" in out else ""
        return env if not env.startswith("3 ") else ""  # the first instance's, still

    message = lambda: f"the restarted container's output: {logs(agent, 'rereads')!r}"  # noqa: E731
    assert wait_for(new_env, 20, message=message) == "4 user-interface.properties"


# -- Secret: a volume with mode 0400 on tmpfs ---------------------------------------------

SECRET = f"""\
apiVersion: v1
kind: Secret
metadata: {{name: dotfile-secret}}
data:
  .secret-file: {base64.b64encode(b"value-2").decode()}
stringData:
  username: admin
"""

SECRET_POD = """\
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c"]
      args:
        - echo "== content"; cat /etc/secret-volume/.secret-file; echo;
          cat /etc/secret-volume/username; echo;
          echo "== mode"; stat -L -c %a /etc/secret-volume/.secret-file;
          echo "== fs"; awk '$2 == "/etc/secret-volume" {print $3}' /proc/mounts;
          echo "== end"; trap 'exit 0' TERM; while true; do sleep 1; done
      volumeMounts: [{name: secret-volume, mountPath: /etc/secret-volume, readOnly: true}]
  volumes:
    - name: secret-volume
      secret: {secretName: dotfile-secret, defaultMode: 0400}
"""


def test_secret_volume_mode_0400_on_tmpfs(node: TestNode, agent: Agent) -> None:
    agent.write_manifest("secret.yaml", SECRET)
    agent.write_manifest("pod.yaml", pod_yaml("secret-dotfiles-pod", SECRET_POD))
    agent.wait_pod("secret-dotfiles-pod", is_ready, what="ready")
    out = wait_logs(agent, "secret-dotfiles-pod", "== end")
    assert section(out, "content") == "value-2\nadmin"
    assert section(out, "mode") == "400"
    assert section(out, "fs") == "tmpfs"
    # Secret values stay out of the status and the agent's log.
    assert "value-2" not in str(agent.status())
    assert "value-2" not in agent.log_path.read_text(errors="replace")


FS_GROUP_POD = """\
spec:
  terminationGracePeriodSeconds: 2
  securityContext: {fsGroup: 2000}
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c"]
      args:
        - echo "== secret"; stat -L -c '%a %g' /etc/secret-volume/username;
          echo "== scratch"; stat -c '%a %g' /scratch; touch /scratch/new;
          stat -c '%g' /scratch/new; echo "== tmpfs";
          awk '$2 == "/scratch" {print $3}' /proc/mounts; df -k /scratch | awk 'NR == 2 {print $2}';
          echo "== end";
          trap 'exit 0' TERM; while true; do sleep 1; done
      volumeMounts:
        - {name: secret-volume, mountPath: /etc/secret-volume}
        - {name: scratch, mountPath: /scratch}
  volumes:
    - name: secret-volume
      secret: {secretName: dotfile-secret, defaultMode: 0400}
    - {name: scratch, emptyDir: {medium: Memory, sizeLimit: 16Mi}}
"""


def test_fs_group_owns_secret_files_and_empty_dir(node: TestNode, agent: Agent) -> None:
    agent.write_manifest("secret.yaml", SECRET)
    agent.write_manifest("pod.yaml", pod_yaml("security-context-demo", FS_GROUP_POD))
    agent.wait_pod("security-context-demo", is_ready, what="ready")
    out = wait_logs(agent, "security-context-demo", "== end")
    assert section(out, "secret") == "440 2000"  # 0400 plus the group's read, as documented
    # setgid: what the container creates belongs to the fsGroup.
    assert section(out, "scratch") == "2777 2000\n2000"
    assert section(out, "tmpfs") == "tmpfs\n16384"  # medium Memory, sizeLimit 16Mi


# -- kinds the node does not run ------------------------------------------------------------

DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: nginx-deployment}
spec:
  replicas: 3
  selector: {matchLabels: {app: nginx}}
  template:
    metadata: {labels: {app: nginx}}
    spec: {containers: [{name: nginx, image: nginx:1.14.2}]}
"""


@pytest.mark.runtime_independent
def test_deployment_is_reported_unsupported_while_other_pods_run(
    node: TestNode, agent: Agent
) -> None:
    agent.write_manifest("deploy.yaml", DEPLOYMENT)
    agent.write_manifest("pod.yaml", pod_yaml("plain", SECRET_POD.split("      volumeMounts")[0]))
    agent.wait_pod("plain", is_ready, what="ready")
    errors = agent.status()["errors"]
    (error,) = [e for e in errors if e["source"].endswith("deploy.yaml")]
    assert error["object"] == "Deployment default/nginx-deployment"
    assert error["field"] == "kind"
    assert "not supported in standalone mode" in error["message"]
    assert '"manifest_unsupported_kind"' in agent.log_path.read_text(errors="replace")
    assert [p["metadata"]["name"] for p in agent.status()["pods"]] == ["plain"]


# -- subPath --------------------------------------------------------------------------------

SUB_PATH = """\
spec:
  terminationGracePeriodSeconds: 2
  initContainers:
    - name: write
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", "mkdir -p /all/html && echo hello-subpath > /all/html/index.html"]
      volumeMounts: [{name: site-data, mountPath: /all}]
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c"]
      args:
        - echo "== html"; ls /var/www/html; cat /var/www/html/index.html;
          echo "== created"; ls -d /var/lib/mysql && touch /var/lib/mysql/db;
          echo "== game"; cat /etc/game.properties; echo "== end";
          touch /logs/hello.txt;
          trap 'exit 0' TERM; while true; do sleep 1; done
      env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
      volumeMounts:
        - {name: site-data, mountPath: /logs, subPathExpr: $(POD_NAME)}
        - {name: site-data, mountPath: /var/www/html, subPath: html}
        - {name: site-data, mountPath: /var/lib/mysql, subPath: mysql}
        - {name: config, mountPath: /etc/game.properties, subPath: game.properties}
  volumes:
    - {name: site-data, emptyDir: {}}
    - {name: config, configMap: {name: game-demo}}
"""


def test_sub_path_and_sub_path_expr_mounts(node: TestNode, agent: Agent) -> None:
    agent.write_manifest("cm.yaml", CONFIG_MAP)
    agent.write_manifest("pod.yaml", pod_yaml("my-lamp-site", SUB_PATH))
    pod = agent.wait_pod("my-lamp-site", is_ready, what="ready")
    out = wait_logs(agent, "my-lamp-site", "== end")
    assert section(out, "html") == "index.html\nhello-subpath"
    assert section(out, "created") == "/var/lib/mysql"  # created in the volume, writable
    volume = node.state_dir / "pods" / pod["metadata"]["uid"] / "volumes" / "empty-dir"
    assert (volume / "site-data" / "mysql" / "db").exists()
    assert section(out, "game") == "enemy.types=aliens,monsters\nplayer.maximum-lives=5"
    # subPathExpr: the docs' per-pod log directory, named by the downward API.
    wait_for(
        lambda: (volume / "site-data" / "my-lamp-site" / "hello.txt").exists(),
        10,
        message="hello.txt in the pod's own subdirectory",
    )


# -- native sidecars (the docs' "sidecar containers" example, as our own manifest) ----------

SIDECAR = """\
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
  initContainers:
    - name: logshipper
      image: busybox
      imagePullPolicy: IfNotPresent
      restartPolicy: Always
      command: ["sh", "-c"]
      args:
        - sleep 2; echo shipping > /opt/logs/sidecar-up;
          trap 'exit 0' TERM; while true; do sleep 1; done
      startupProbe:
        exec: {{command: ["cat", "/opt/logs/sidecar-up"]}}
        periodSeconds: 1
      volumeMounts: [{{name: data, mountPath: /opt/logs}}]
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c"]
      args:
        - echo "== seen"; cat /opt/logs/sidecar-up || echo missing; echo "== end"; {main}
      volumeMounts: [{{name: data, mountPath: /opt/logs}}]
  volumes:
    - {{name: data, emptyDir: {{}}}}
"""


def test_native_sidecar_runs_before_the_app_and_is_listed(node: TestNode, agent: Agent) -> None:
    agent.write_manifest("pod.yaml", pod_yaml("myapp", SIDECAR.format(policy="Always", main=SLEEP)))
    pod = agent.wait_pod("myapp", is_ready, timeout=40, what="ready")
    # The app started only after the sidecar's startup probe passed: it sees its file.
    assert section(wait_logs(agent, "myapp", "== end"), "seen") == "shipping"
    sidecar = container_status(pod, "logshipper")
    assert sidecar in pod["status"]["initContainerStatuses"]
    assert "running" in sidecar["state"] and sidecar["started"] and sidecar["ready"]
    main, side = container_status(pod, "main"), sidecar
    assert side["state"]["running"]["startedAt"] <= main["state"]["running"]["startedAt"]


def test_sidecar_does_not_keep_a_finished_pod_running(node: TestNode, agent: Agent) -> None:
    manifest = SIDECAR.format(policy="Never", main="sleep 1; exit 0")
    agent.write_manifest("pod.yaml", pod_yaml("job", manifest))

    def succeeded(pod: dict[str, Any]) -> bool:
        return bool(pod["status"]["phase"] == "Succeeded")

    pod = agent.wait_pod("job", succeeded, timeout=40, what="Succeeded")
    assert "terminated" in container_status(pod, "main")["state"]
    sidecar = wait_for(
        lambda: (
            "terminated" in container_status(agent.pod("job") or {}, "logshipper")["state"]
            and container_status(agent.pod("job") or {}, "logshipper")
        ),
        20,
        message="sidecar stopped",
    )
    assert sidecar["restartCount"] == 0
    assert agent.pod("job")["status"]["phase"] == "Succeeded"  # type: ignore[index]


# -- activeDeadlineSeconds ------------------------------------------------------------------


def test_active_deadline_fails_the_pod(node: TestNode, agent: Agent) -> None:
    body = f"""\
spec:
  activeDeadlineSeconds: 3
  priority: 1000
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      image: busybox
      imagePullPolicy: IfNotPresent
      command: ["sh", "-c", {SLEEP!r}]
"""
    agent.write_manifest("pod.yaml", pod_yaml("deadline", body))
    pod = agent.wait_pod("deadline", is_ready, what="ready")
    assert pod["spec"]["priority"] == 1000

    def failed(pod: dict[str, Any]) -> bool:
        stopped = "terminated" in container_status(pod, "main")["state"]
        return bool(pod["status"]["phase"] == "Failed" and stopped)

    pod = agent.wait_pod("deadline", failed, timeout=30, what="Failed, container stopped")
    assert pod["status"]["reason"] == "DeadlineExceeded"
    assert pod["status"]["message"] == (
        "Pod was active on the node longer than the specified deadline"
    )
    main = container_status(pod, "main")
    assert "terminated" in main["state"] and main["restartCount"] == 0


# -- cluster mode: a static pod may use the directory's ConfigMap ---------------------------


@pytest.fixture
def cluster_agent(node: TestNode, api: ApiServerProcess) -> Iterator[Agent]:
    with cluster.cluster_agent(node, api, cluster_dns=None) as agent:
        yield agent


def test_static_pod_uses_the_directorys_configmap_in_cluster_mode(
    cluster_agent: Agent,
) -> None:
    """It runs (the API's NodeRestriction would refuse its mirror pod, which names a
    ConfigMap: none is posted)."""
    cluster_agent.write_manifest("cm.yaml", CONFIG_MAP)
    cluster_agent.write_manifest("pod.yaml", pod_yaml("configmap-demo-pod", CONFIG_POD))
    name = f"configmap-demo-pod-{cluster.NODE_NAME}"
    cluster_agent.wait_pod(name, is_ready, timeout=30, what="ready")
    out = wait_logs(cluster_agent, name, "== end")
    assert section(out, "env") == "3 user-interface.properties"
    assert section(out, "game") == "enemy.types=aliens,monsters\nplayer.maximum-lives=5"
