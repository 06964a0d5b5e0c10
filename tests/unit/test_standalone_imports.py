"""A standalone agent never loads the API client: lightkube and its HTTP stack stay out."""

from __future__ import annotations

import subprocess
import sys

# Cluster-mode code that must load only once a kubeconfig is given.
CLUSTER_ONLY = ("lightkube", "httpx2", "nodeagent.apiserver.client")


def test_standalone_import_path_does_not_load_the_api_client() -> None:
    # A fresh interpreter: this test process has imported the client already.
    script = (
        "import sys, nodeagent.cli, nodeagent.daemon\n"
        f"print(sorted(m for m in sys.modules if m.startswith({CLUSTER_ONLY!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
