"""Running the node's CNI network ourselves: ADD and DEL per the CNI spec (1.0).

containerd runs the CNI plugins inside its CRI plugin; Docker Engine does not, so the Docker
backend asks this module to attach each pod sandbox's network namespace to the node's pod
network, exactly as containerd would with the same conflist (``network.cni``).

The protocol, as libcni speaks it:

- Configuration: the first file of ``conf_dir`` in lexical order ending in ``.conflist``
  (or a single-plugin ``.conf``/``.json``, wrapped into a list); dot-files are ignored, as
  are our own temporary files.
- Each plugin is an executable named after its ``type``, looked up in ``bin_dirs`` (also
  passed as ``CNI_PATH``, so plugins find their IPAM plugin). The environment says what to do
  (``CNI_COMMAND``, ``CNI_CONTAINERID``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``,
  ``CNI_PATH``); stdin carries the plugin's own config with the list's ``name`` and
  ``cniVersion`` injected, plus ``runtimeConfig`` for the capabilities it declares (e.g.
  ``portMappings``) and ``prevResult``.
- ADD runs the plugins in order, each getting the previous one's result; the last result is
  the attachment's. DEL runs them in reverse, each getting the ADD result as ``prevResult``.
- A failing plugin exits non-zero with an error object (``code``, ``msg``, ``details``) on
  stdout; that becomes ``CNIError``.

The cache, and why it is written first. Every attachment has a JSON record under
``cache_dir/results`` (libcni keeps the same in /var/lib/cni/results): the conflist, the
arguments and, once ADD succeeded, the result. It is written *before* the first plugin runs,
so an agent killed halfway through ADD still finds the record and DELs what it may have
allocated. DEL uses the cached conflist and arguments, not the current ones, so an IP is
released even if the conflist changed since; DEL of an attachment with no record is a no-op,
and DEL removes the record only once every plugin succeeded (a failed DEL can be retried).
The record is also where the pod IP is read back from after an agent restart (``address``).

DEL runs every plugin even after one fails, then raises the first failure: freeing the IP
(the first plugin's IPAM) matters more than a stale port mapping.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodeagent.fsutil import write_file_atomic

CACHE_KIND = "cniCacheV1"
DEFAULT_IFNAME = "eth0"
# Where, below the agent's state dir, the agent keeps the records.
CACHE_DIRNAME = "cni-cache"
CONFIG_SUFFIXES = (".conflist", ".conf", ".json")
ADD, DEL = "ADD", "DEL"


class CNIError(Exception):
    """A CNI configuration is unusable, or a plugin failed."""


@dataclass(frozen=True)
class NetworkList:
    """A network configuration list: the conflist as loaded, plugins in ADD order."""

    name: str
    cni_version: str
    plugins: tuple[Mapping[str, Any], ...]
    raw: Mapping[str, Any]


def parse_network_list(raw: Mapping[str, Any], *, source: str = "") -> NetworkList:
    """A NetworkList from a conflist, or from a single plugin's .conf (wrapped)."""
    where = f" in {source}" if source else ""
    if "plugins" not in raw and "type" in raw:  # a single-plugin .conf
        raw = {
            "cniVersion": raw.get("cniVersion", ""),
            "name": raw.get("name", ""),
            "plugins": [raw],
        }
    plugins = raw.get("plugins")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise CNIError(f"network configuration has no name{where}")
    if not isinstance(plugins, list) or not plugins:
        raise CNIError(f"network {name!r} has no plugins{where}")
    for plugin in plugins:
        kind = plugin.get("type") if isinstance(plugin, dict) else None
        if not isinstance(kind, str) or not kind or "/" in kind or kind.startswith("."):
            raise CNIError(f"network {name!r} has a plugin without a valid type{where}")
    return NetworkList(
        name=name,
        cni_version=str(raw.get("cniVersion", "")),
        plugins=tuple(plugins),
        raw=raw,
    )


def load_network_list(conf_dir: Path) -> NetworkList:
    """The network list libcni would pick: the first config file by name."""
    try:
        names = sorted(os.listdir(conf_dir))
    except OSError as exc:
        raise CNIError(f"cannot read CNI config dir {conf_dir}: {exc}") from exc
    for name in names:
        if name.startswith(".") or not name.endswith(CONFIG_SUFFIXES):
            continue
        path = conf_dir / name
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CNIError(f"cannot load CNI config {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise CNIError(f"CNI config {path} is not a JSON object")
        return parse_network_list(raw, source=str(path))
    raise CNIError(f"no CNI network configuration in {conf_dir}")


def plugin_stdin(
    net: NetworkList,
    plugin: Mapping[str, Any],
    *,
    capability_args: Mapping[str, Any],
    prev_result: Mapping[str, Any] | None,
) -> bytes:
    """What one plugin reads on stdin: its config, the list's name and version, and more."""
    conf = {k: v for k, v in plugin.items() if k != "runtimeConfig"}
    conf["name"] = net.name
    conf["cniVersion"] = net.cni_version
    declared = plugin.get("capabilities") or {}
    runtime_config = {
        cap: value
        for cap, value in capability_args.items()
        if isinstance(declared, dict) and declared.get(cap)
    }
    if runtime_config:
        conf["runtimeConfig"] = runtime_config
    if prev_result is not None:
        conf["prevResult"] = dict(prev_result)
    return json.dumps(conf, sort_keys=True).encode()


def cni_args_string(args: Sequence[tuple[str, str]]) -> str:
    """CNI_ARGS: ``IgnoreUnknown=1`` (so plugins accept the Kubernetes keys), then ours."""
    return ";".join(["IgnoreUnknown=1", *(f"{k}={v}" for k, v in args)])


def result_ip(result: Mapping[str, Any]) -> str:
    """The first address of a CNI result (IPv4 preferred), without its prefix length."""
    ips = result.get("ips")
    addresses = [str(entry.get("address", "")) for entry in ips or () if isinstance(entry, dict)]
    addresses = [a.split("/", 1)[0] for a in addresses if a]
    v4 = [a for a in addresses if ":" not in a]
    return (v4 or addresses or [""])[0]


def _error_message(stdout: bytes, stderr: bytes, returncode: int) -> str:
    try:
        err = json.loads(stdout)
    except ValueError:
        err = None
    if isinstance(err, dict) and ("msg" in err or "code" in err):
        message = str(err.get("msg", ""))
        if err.get("details"):
            message += f": {err['details']}"
        return f"{message} (code {err.get('code')})"
    text = (stderr or stdout).decode(errors="replace").strip()
    return text[-512:] or f"exit status {returncode}"


@dataclass(frozen=True)
class _Record:
    """One attachment's cache record (see the module docstring)."""

    container_id: str
    ifname: str
    net: NetworkList
    cni_args: tuple[tuple[str, str], ...]
    capability_args: Mapping[str, Any]
    result: Mapping[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": CACHE_KIND,
            "containerId": self.container_id,
            "ifName": self.ifname,
            "networkName": self.net.name,
            "config": dict(self.net.raw),
            "cniArgs": [list(pair) for pair in self.cni_args],
            "capabilityArgs": dict(self.capability_args),
            "result": dict(self.result) if self.result is not None else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Record:
        if data.get("kind") != CACHE_KIND:
            raise CNIError(f"unknown CNI cache record kind {data.get('kind')!r}")
        result = data.get("result")
        return cls(
            container_id=str(data["containerId"]),
            ifname=str(data["ifName"]),
            net=parse_network_list(data["config"], source="the CNI cache"),
            cni_args=tuple((str(k), str(v)) for k, v in data.get("cniArgs") or ()),
            capability_args=dict(data.get("capabilityArgs") or {}),
            result=result if isinstance(result, dict) else None,
        )


@dataclass(frozen=True)
class CNIExec:
    """The node's CNI network, run by us. Safe for concurrent attachments of different ids."""

    conf_dir: Path
    bin_dirs: tuple[Path, ...]
    cache_dir: Path
    timeout_s: float = 60.0  # per plugin invocation
    ifname: str = DEFAULT_IFNAME

    # -- the runtime-facing calls -------------------------------------------------------------

    async def add(
        self,
        container_id: str,
        netns: str,
        *,
        cni_args: Sequence[tuple[str, str]] = (),
        capability_args: Mapping[str, Any] | None = None,
    ) -> str:
        """Attach netns to the network; return its IP ("" if the result has none)."""
        net = await asyncio.to_thread(load_network_list, self.conf_dir)
        record = _Record(
            container_id=container_id,
            ifname=self.ifname,
            net=net,
            cni_args=tuple(cni_args),
            capability_args=dict(capability_args or {}),
            result=None,
        )
        await asyncio.to_thread(self._write, record)  # write-ahead: DEL can always find it
        result: Mapping[str, Any] | None = None
        for plugin in net.plugins:
            stdin = plugin_stdin(
                net, plugin, capability_args=record.capability_args, prev_result=result
            )
            result = await self._invoke(ADD, plugin, stdin, record, netns)
        final = dict(result or {})
        await asyncio.to_thread(self._write, dataclasses.replace(record, result=final))
        return result_ip(final)

    async def delete(self, container_id: str, netns: str) -> None:
        """Detach (DEL in reverse order, from the cached record); no record is a no-op."""
        record = await asyncio.to_thread(self._read, container_id)
        if record is None:
            return
        first_error: CNIError | None = None
        for plugin in reversed(record.net.plugins):
            stdin = plugin_stdin(
                record.net,
                plugin,
                capability_args=record.capability_args,
                prev_result=record.result,
            )
            try:
                await self._invoke(DEL, plugin, stdin, record, netns)
            except CNIError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        await asyncio.to_thread(self._forget, container_id)

    def address(self, container_id: str) -> str | None:
        """The attachment's IP from its record; None if there is no completed ADD.

        Blocking (one small file read): call it from a worker thread.
        """
        try:
            record = self._read(container_id)
        except CNIError:
            return None
        if record is None or record.result is None:
            return None
        return result_ip(record.result)

    def problem(self) -> str:
        """ "" when the conf dir holds a network list to attach with; else the reason."""
        try:
            load_network_list(self.conf_dir)
        except CNIError as exc:
            return str(exc)
        return ""

    def recorded(self) -> list[str]:
        """The container ids that have a record (attached, or attaching). Blocking."""
        suffix = f"-{self.ifname}"
        ids = []
        for path in sorted(self._results_dir().glob(f"*{suffix}")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                ids.append(str(json.loads(path.read_text())["containerId"]))
        return ids

    # -- plugins --------------------------------------------------------------------------

    def find_plugin(self, kind: str) -> Path:
        for directory in self.bin_dirs:
            candidate = directory / kind
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
        dirs = ", ".join(str(d) for d in self.bin_dirs)
        raise CNIError(f"failed to find plugin {kind!r} in path [{dirs}]")

    async def _invoke(
        self,
        command: str,
        plugin: Mapping[str, Any],
        stdin: bytes,
        record: _Record,
        netns: str,
    ) -> dict[str, Any]:
        kind = str(plugin["type"])
        path = self.find_plugin(kind)
        env = {
            **os.environ,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": record.container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": record.ifname,
            "CNI_ARGS": cni_args_string(record.cni_args),
            "CNI_PATH": os.pathsep.join(str(d) for d in self.bin_dirs),
        }
        what = f"CNI {command} {kind} for {record.container_id[:12]}"
        try:
            proc = await asyncio.create_subprocess_exec(
                str(path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            raise CNIError(f"{what}: {exc}") from exc
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(stdin), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise CNIError(f"{what}: timed out after {self.timeout_s:g}s") from None
        if proc.returncode != 0:
            message = _error_message(stdout, stderr, proc.returncode or 0)
            raise CNIError(f"{what}: {message}")
        if command != ADD:
            return {}
        try:
            result = json.loads(stdout)
        except ValueError as exc:
            raise CNIError(f"{what}: unparsable result {stdout[:200]!r}") from exc
        if not isinstance(result, dict):
            raise CNIError(f"{what}: result is not a JSON object")
        return result

    # -- the cache --------------------------------------------------------------------------

    def _results_dir(self) -> Path:
        return self.cache_dir / "results"

    def _path(self, network: str, container_id: str) -> Path:
        return self._results_dir() / f"{network}-{container_id}-{self.ifname}"

    def _find(self, container_id: str) -> Path | None:
        if not container_id or "/" in container_id:
            return None
        found = sorted(self._results_dir().glob(f"*-{container_id}-{self.ifname}"))
        return found[0] if found else None

    def _read(self, container_id: str) -> _Record | None:
        path = self._find(container_id)
        if path is None:
            return None
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None  # removed by a concurrent DEL
        except (OSError, ValueError) as exc:
            raise CNIError(f"unreadable CNI cache record {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise CNIError(f"CNI cache record {path} is not a JSON object")
        return _Record.from_json(data)

    def _write(self, record: _Record) -> None:
        directory = self._results_dir()
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self._path(record.net.name, record.container_id)
        write_file_atomic(target, json.dumps(record.to_json(), sort_keys=True))

    def _forget(self, container_id: str) -> None:
        path = self._find(container_id)
        if path is not None:
            path.unlink(missing_ok=True)
