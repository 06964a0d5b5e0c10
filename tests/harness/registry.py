"""A real private image registry in a test node's network namespace.

Debian's ``docker-registry`` (the distribution registry) serves ``127.0.0.1:5000`` in the
node's netns with htpasswd (bcrypt) auth over plain HTTP, which containerd's CRI and dockerd
both allow for localhost. Images are pushed with ``skopeo`` from the locally built archives
(Docker schema 2, which both runtimes pull). Its access log (stderr) lets a test or a bench
count the manifest requests, that is the pulls, the registry served.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.harness.node import TestNode, stop_process
from tests.harness.wait import wait_for

HOST = "127.0.0.1:5000"
USER = "puller"
PASSWORD = "s3cret-pw"
TOOLS = ("docker-registry", "skopeo", "htpasswd")

_CONFIG = """\
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: {data}
  delete:
    enabled: true
http:
  addr: {host}
auth:
  htpasswd:
    realm: nodeagent-tests
    path: {htpasswd}
"""


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def docker_config(user: str = USER, password: str = PASSWORD, host: str = HOST) -> str:
    """A docker config.json granting ``user`` on ``host`` (the .dockerconfigjson format)."""
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": auth}}})


@dataclass
class Registry:
    __test__ = False

    node: TestNode
    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    @classmethod
    def start(cls, node: TestNode, root: Path) -> Registry:
        root.mkdir(parents=True, exist_ok=True)
        hashed = subprocess.run(
            ["htpasswd", "-Bbn", USER, PASSWORD], check=True, capture_output=True, text=True
        ).stdout
        (root / "htpasswd").write_text(hashed)
        config = root / "config.yml"
        config.write_text(_CONFIG.format(data=root / "data", host=HOST, htpasswd=root / "htpasswd"))
        with open(root / "registry.log", "ab") as log:
            proc = node.popen(
                ["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        registry = cls(node, root, proc)
        wait_for(registry._answers, 20, message=lambda: registry.log_path.read_text())
        return registry

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"registry exited\n{self.log_path.read_text()}")
        result = self.node.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{HOST}/v2/"],
            check=False,
        )
        return result.stdout.strip() == "401"  # up, and asking for credentials

    def push(self, archive: Path, repo: str, tag: str) -> str:
        """Push the archive's image as ``repo:tag``; its manifest digest."""
        digest_file = self.root / "digest"
        self.node.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--format",
                "v2s2",
                "--dest-tls-verify=false",
                "--dest-creds",
                f"{USER}:{PASSWORD}",
                "--digestfile",
                str(digest_file),
                f"oci-archive:{archive}",
                f"docker://{HOST}/{repo}:{tag}",
            ]
        )
        return digest_file.read_text().strip()

    def manifest_requests(self, repo: str, reference: str) -> int:
        """Requests the registry answered (200) for the manifest ``repo:reference``. Each pull
        by tag resolves the tag once (a HEAD on containerd, a GET on Docker); fetching the
        manifest by digest after it may be skipped when the runtime still has the content."""
        # The access log's lines: "HEAD /v2/REPO/manifests/REF HTTP/1.1" 200 ...
        request = re.escape(f"/v2/{repo}/manifests/{reference}")
        pattern = re.compile(rf'"(GET|HEAD) {request} HTTP/[0-9.]+" 200 ')
        text = self.log_path.read_text(errors="replace")
        return sum(1 for line in text.splitlines() if pattern.search(line))

    def close(self) -> None:
        stop_process(self.proc, timeout=10)
