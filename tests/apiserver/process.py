"""The test API server in a child process, and its ``/fake/v1/`` hooks from the test side.

    async with ApiServerProcess(tmp_path, host="10.200.0.1") as api:
        agent_kubeconfig = api.node_kubeconfig("n1")
        await api.fail_requests(2, code=500, resource="pods", subresource="status")
        await api.restart(down_seconds=1.0)   # same port, same objects

``stop()`` then ``start()`` restarts the process itself; its state directory keeps the CA and
the objects (the watch history starts empty).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import ssl
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parents[2]


class ApiServerProcess:
    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        plain_http: bool = False,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 30.0,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port
        self.plain_http = plain_http
        self.extra_args = extra_args
        self.start_timeout = start_timeout
        self.token = secrets.token_urlsafe(24)
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.state_dir = workdir / "state"
        self.info: dict[str, Any] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._node_configs: list[tuple[str, str]] = []

    @property
    def url(self) -> str:
        return str(self.info["url"])

    def node_kubeconfig(self, node_name: str, *, node_proxier: bool = True) -> Path:
        """Path of a client-cert kubeconfig for ``system:node:<node_name>`` (written at start,
        so ask before ``start`` or restart after). ``node_proxier=False`` leaves out the
        system:node-proxier binding: the node gets what the Node authorizer alone grants."""
        path = self.workdir / f"{node_name}.kubeconfig"
        flag = "--node-kubeconfig" if node_proxier else "--bare-node-kubeconfig"
        spec = (flag, f"{node_name}={path}")
        if spec not in self._node_configs:
            self._node_configs.append(spec)
        return path

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "tests.apiserver",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--kubeconfig-out",
            str(self.kubeconfig),
            "--state-dir",
            str(self.state_dir),
            # One argument: a random token may start with "-", which argparse takes for a flag.
            f"--token={self.token}",
            *(["--plain-http"] if self.plain_http else []),
            *[arg for spec in self._node_configs for arg in spec],
            *self.extra_args,
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self._proc = await asyncio.create_subprocess_exec(
            *args, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE
        )
        stdout = self._proc.stdout
        if stdout is None:
            raise RuntimeError("no stdout pipe to the test API server")
        try:
            line = await asyncio.wait_for(stdout.readline(), self.start_timeout)
        except TimeoutError:
            await self.kill()
            raise
        if not line:
            code = await self._proc.wait()
            raise RuntimeError(f"test API server exited with {code} before serving")
        self.info = json.loads(line)
        self.port = int(self.info["port"])  # restarts reuse the port

    async def stop(self) -> None:
        """SIGTERM: the process saves its objects and exits."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def kill(self) -> None:
        """SIGKILL: nothing is saved."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()

    async def __aenter__(self) -> ApiServerProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def control(self, method: str, what: str, body: Any = None) -> Any:
        ctx: ssl.SSLContext | bool = False
        if not self.plain_http:
            ctx = ssl.create_default_context(cafile=str(self.state_dir / "pki" / "ca.crt"))
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method, f"{self.url}/fake/v1/{what}", json=body, headers=headers, ssl=ctx
            ) as resp,
        ):
            resp.raise_for_status()
            return await resp.json()

    async def fail_requests(self, count: int = 1, **rule: Any) -> None:
        """Same arguments as ``Faults.fail_requests`` (methods as a list)."""
        body = {"count": count, **rule}
        if "methods" in body:
            body["methods"] = sorted(body["methods"])
        await self.control("POST", "faults", body)

    async def clear_faults(self) -> None:
        await self.control("DELETE", "faults")

    async def drop_history(self) -> None:
        await self.control("POST", "history", {"drop": True})

    async def set_history(self, capacity: int) -> None:
        await self.control("POST", "history", {"capacity": capacity})

    async def restart(self, down_seconds: float = 0.0, *, within: float = 10.0) -> None:
        """Restart the listener inside the process (objects and history kept); return once
        it serves again."""
        before = (await self.control("GET", "status"))["starts"]
        await self.control("POST", "restart", {"downSeconds": down_seconds})
        async with asyncio.timeout(within):
            while True:
                await asyncio.sleep(0.02)
                try:
                    if (await self.control("GET", "status"))["starts"] > before:
                        return
                except aiohttp.ClientError:
                    continue

    async def assign_pod_cidrs(self) -> list[str]:
        """Node IPAM (--node-ipam) assigns every waiting Node its podCIDR now."""
        answer = await self.control("POST", "ipam", {})
        return list(answer["assigned"])

    async def requests(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.control("GET", "requests")
        return result
