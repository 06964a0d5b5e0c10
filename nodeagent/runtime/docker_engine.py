"""The edge to Docker Engine: blocking docker-py calls, run in threads, bounded, translated.

``Engine`` is the one place the Docker backend touches docker-py:

- Every call runs on the engine's own thread pool, never on the event loop, and not on the
  loop's default executor either: an exec probe holds a thread for its whole timeout, and a
  hung daemon must not starve the rest of the agent of threads.
- Every call is bounded twice: by the socket timeout of the client (so a worker thread
  always comes back) and by ``wait_for`` on our side (so a caller always does). Errors are
  translated here and nowhere else (``docker_convert.translate_error``).
- Calls that may legitimately take long (exec output, pulls) use a second client without a
  socket timeout, bounded by ``wait_for`` alone: an exec that outlives its timeout has its
  processes killed (``kill_exec_processes``), which ends the stream its thread reads; a pull
  has its own, long, budget.

The blocking helpers below do what takes more than one docker-py call (or a file) and are
meant to be run through ``call``. The daemon shares our PID namespace (it is reached on a
local unix socket), so the PIDs Docker reports are ours to signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import psutil
import structlog

from nodeagent.runtime import base
from nodeagent.runtime import docker_convert as convert

log = structlog.get_logger("nodeagent.runtime.docker")

# The Engine API version we speak: Docker 20.10's, served by every later Engine too.
DOCKER_API_VERSION = "1.41"
MAX_THREADS = 32
# How long Docker may take to record an exec's exit after its output ended.
EXEC_EXIT_WAIT_S = 2.0

_T = TypeVar("_T")


def base_url(endpoint: str) -> str:
    """docker-py's base_url: ``unix:///abs/path`` as given, a bare absolute path made into one."""
    return f"unix://{endpoint}" if endpoint.startswith("/") else endpoint


class Engine:
    """docker-py clients, a thread pool, and the bounded, translated ``call``."""

    def __init__(self, endpoint: str, *, timeout_s: float) -> None:
        url = base_url(endpoint)
        self.timeout_s = timeout_s
        # Constructing a client with a fixed version does no I/O.
        self.api = docker.APIClient(
            base_url=url, version=DOCKER_API_VERSION, timeout=timeout_s, max_pool_size=MAX_THREADS
        )
        self.long = docker.APIClient(
            base_url=url, version=DOCKER_API_VERSION, timeout=None, max_pool_size=MAX_THREADS
        )
        self._pool = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="docker")

    def submit(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> asyncio.Future[_T]:
        """Run fn in a pool thread (with the caller's context vars); no bound, no translation."""
        call = functools.partial(fn, *args, **kwargs)
        context = contextvars.copy_context()
        return asyncio.get_running_loop().run_in_executor(self._pool, context.run, call)

    async def call(
        self,
        what: str,
        fn: Callable[..., _T],
        *args: Any,
        timeout_s: float | None = None,
        failure: type[base.RuntimeFailure] | None = None,
        **kwargs: Any,
    ) -> _T:
        """fn(*args, **kwargs) in a thread, within timeout_s; errors become the seam's."""
        budget = self.timeout_s if timeout_s is None else timeout_s
        try:
            return await asyncio.wait_for(self.submit(fn, *args, **kwargs), budget)
        except TimeoutError as exc:
            raise base.RuntimeUnavailable(f"{what}: no answer within {budget:g}s") from exc
        except Exception as exc:
            raise convert.translate_error(exc, what, failure=failure) from exc

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()
        self.long.close()

    # --- blocking helpers, run through call ----------------------------------------------------

    def create(self, spec: convert.CreateSpec) -> str:
        host_config = self.api.create_host_config(**spec.host)
        created = self.api.create_container(host_config=host_config, **spec.container)
        return str(created["Id"])

    def remove_quietly(self, container_id: str) -> None:
        """Remove a container (running or not) and its log link; gone already is fine."""
        try:
            data = self.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return
        labels = (data.get("Config") or {}).get("Labels") or {}
        link = labels.get(convert.LABEL_LOG_PATH, "")
        if link and os.path.islink(link):
            with contextlib.suppress(OSError):
                os.unlink(link)
        with contextlib.suppress(docker.errors.NotFound):
            self.api.remove_container(container_id, v=True, force=True)

    def link_log(self, container_id: str) -> None:
        """Link the CRI log path (a label) to Docker's log file, named once started."""
        data = self.api.inspect_container(container_id)
        path = ((data.get("Config") or {}).get("Labels") or {}).get(convert.LABEL_LOG_PATH, "")
        target = data.get("LogPath") or ""
        if not path or not target:
            return  # no CRI log path asked for, or a log driver without a file
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.symlink(target, path)
        except OSError as exc:
            # The container runs fine without it; only the file layout suffers.
            log.warning("log_link_failed", container=container_id[:12], path=path, error=str(exc))

    def pull(self, image: str, auth: base.RegistryAuth | None) -> None:
        config = None
        if auth is not None:
            config = {"username": auth.username, "password": auth.password}
            if auth.identity_token:
                config["identitytoken"] = auth.identity_token
        # Errors after the pull began arrive in the stream, not as an HTTP status.
        for event in self.long.pull(image, stream=True, decode=True, auth_config=config):
            if isinstance(event, dict) and event.get("error"):
                raise base.ImagePullFailed(f"PullImage: {event['error']}")

    def exec_exit_code(self, exec_id: str) -> int:
        """The exit code of a finished exec.

        Docker ends the output stream when the process's output closes, and records the exit
        a moment later: until then the exec still reads as running, without an exit code
        (which must never pass for 0, or a failing probe would succeed).
        """
        deadline = time.monotonic() + EXEC_EXIT_WAIT_S
        while True:
            data = self.api.exec_inspect(exec_id)
            code = data.get("ExitCode")
            if not data.get("Running") and code is not None:
                return int(code)
            if time.monotonic() > deadline:
                raise base.RuntimeFailure(f"ExecInspect: no exit code for exec {exec_id[:12]}")
            time.sleep(0.01)

    def kill_exec_processes(self, exec_id: str) -> None:
        """SIGKILL a running exec and everything it started."""
        data = self.api.exec_inspect(exec_id)
        pid = int(data.get("Pid") or 0)
        if not data.get("Running") or pid <= 0:
            return
        try:
            root = psutil.Process(pid)
            doomed = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in doomed:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGKILL)
