"""The CLI's side of the status endpoint: one blocking GET /status over the unix socket.

Blocking on purpose: ``nodeagent status`` does one request and exits, so an event loop would
buy nothing. What matters here is the failure path. The person running the command usually
made one of three mistakes (the agent is not running, they are not root, they pointed at the
wrong socket), and each gets a sentence that says which, instead of a socket traceback.
"""

from __future__ import annotations

import json
import os
import socket
import stat
from typing import Any

# A snapshot of a full node (110 pods with statuses) is a few hundred KiB; this only stops a
# runaway peer from filling memory.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class StatusUnavailable(Exception):
    """The agent's status could not be read; the message is meant for the person at the CLI."""


def fetch_status(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET /status from the agent listening on ``path``; raise StatusUnavailable on failure."""
    raw = _exchange(
        path,
        b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        timeout=timeout,
    )
    status, body = _parse_response(raw, path)
    if status != 200:
        detail = body.decode("utf-8", "replace").strip()
        raise StatusUnavailable(f"the agent at {path} answered HTTP {status}: {detail}")
    try:
        snapshot = json.loads(body)
    except ValueError as e:
        raise StatusUnavailable(f"the agent at {path} sent invalid JSON: {e}") from None
    if not isinstance(snapshot, dict):
        raise StatusUnavailable(
            f"the agent at {path} sent a {type(snapshot).__name__}, not an object"
        )
    return snapshot


def _not_running(path: str, detail: str = "") -> StatusUnavailable:
    return StatusUnavailable(
        f"no agent is listening at {path}{detail}: is `nodeagent run` running? (--status-socket)"
    )


def _exchange(path: str, request: bytes, *, timeout: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise _not_running(path) from None
        except ConnectionRefusedError:
            if not _is_socket(path):
                raise StatusUnavailable(f"{path} is not a socket (--status-socket)") from None
            # The file is there but nobody accepts: an agent that died without cleaning up.
            raise _not_running(path, " (the socket file is left over)") from None
        except PermissionError:
            raise StatusUnavailable(
                f"permission denied connecting to {path}: are you root?"
            ) from None
        except TimeoutError:
            raise StatusUnavailable(
                f"the agent at {path} did not accept within {timeout:g}s"
            ) from None
        except OSError as e:
            raise StatusUnavailable(f"cannot connect to {path}: {e.strerror or e}") from None
        try:
            sock.sendall(request)
            chunks: list[bytes] = []
            size = 0
            # The server closes after one response, so EOF marks its end.
            while chunk := sock.recv(65536):
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise StatusUnavailable(f"the agent at {path} sent an oversized response")
                chunks.append(chunk)
        except TimeoutError:
            raise StatusUnavailable(
                f"the agent at {path} did not answer within {timeout:g}s"
            ) from None
        except OSError as e:
            raise StatusUnavailable(f"reading from {path} failed: {e.strerror or e}") from None
    return b"".join(chunks)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def _parse_response(raw: bytes, path: str) -> tuple[int, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise StatusUnavailable(
            f"the peer at {path} does not speak HTTP; is it a nodeagent socket?"
        )
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit():
            if len(body) < int(value):
                raise StatusUnavailable(f"the agent at {path} closed the connection mid-response")
            body = body[: int(value)]
    return int(parts[1]), body
