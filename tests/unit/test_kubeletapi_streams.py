"""Streaming sessions: the path and query -> the runtime's request, and the relayed head."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.kubeletapi import streams
from nodeagent.model.pod import PodUID
from nodeagent.runtime.base import (
    SandboxID,
    SandboxInfo,
    SandboxState,
    StreamKind,
    StreamRequest,
)

POD: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
    "status": {
        "containerStatuses": [
            {"name": "app", "containerID": "containerd://c1", "state": {"running": {}}},
            {"name": "done", "containerID": "containerd://c2", "state": {"terminated": {}}},
        ]
    },
}
SANDBOXES = [
    SandboxInfo(SandboxID("old"), PodUID("u1"), "web", "default", 0, SandboxState.NOTREADY, 0),
    SandboxInfo(SandboxID("s1"), PodUID("u1"), "web", "default", 1, SandboxState.READY, 0),
]


def ask(path: str, **query: list[str]) -> StreamRequest | streams.Refusal:
    return streams.session(path.strip("/").split("/"), query, [POD], SANDBOXES)


def test_exec_and_attach_name_the_running_container() -> None:
    got = ask("/exec/default/web/app", command=["sh", "-c", "id"], stdout=["1"], tty=["true"])
    assert got == StreamRequest(
        StreamKind.EXEC, "c1", command=("sh", "-c", "id"), stdout=True, tty=True
    )
    attach = ask("/attach/default/web/app", stdin=["true"])
    assert attach == StreamRequest(StreamKind.ATTACH, "c1", stdin=True)


def test_port_forward_names_the_ready_sandbox() -> None:
    got = ask("/portForward/default/web", port=["8080", "53"])
    assert got == StreamRequest(StreamKind.PORT_FORWARD, "s1", ports=(8080, 53))


@pytest.mark.parametrize(
    ("path", "query", "code", "message"),
    [
        ("/exec/default/nope/app", {"stdout": ["1"], "command": ["x"]}, 404, "pod default/nope"),
        ("/exec/default/web/nope", {"stdout": ["1"], "command": ["x"]}, 404, "'nope' not found"),
        ("/exec/default/web/done", {"stdout": ["1"], "command": ["x"]}, 400, "is not running"),
        ("/exec/default/web/app", {"command": ["x"]}, 400, "at least one of stdin"),
        ("/exec/default/web/app", {"stdout": ["1"]}, 400, "at least 1 command"),
        ("/exec/default/web", {"stdout": ["1"]}, 400, "expected /exec/{namespace}/{pod}"),
        ("/portForward/default/web", {"port": ["http"]}, 400, "'http' is not a port number"),
    ],
)
def test_bad_sessions_say_why(
    path: str, query: dict[str, list[str]], code: int, message: str
) -> None:
    got = ask(path, **query)
    assert isinstance(got, streams.Refusal) and got.code == code
    assert message in got.message


def test_the_relayed_head_goes_to_the_streaming_url_without_our_credentials() -> None:
    head = streams.relay_head(
        "POST",
        "http://127.0.0.1:4321/exec/Tok3n",
        "command=id&stdout=1",
        [
            ("Host", "node-a:10250"),
            ("Authorization", "Bearer x"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
            ("X-Stream-Protocol-Version", "channel.k8s.io"),
        ],
    )
    assert head == (
        b"POST /exec/Tok3n?command=id&stdout=1 HTTP/1.1\r\nHost: 127.0.0.1:4321\r\n"
        b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"
        b"X-Stream-Protocol-Version: channel.k8s.io\r\n\r\n"
    )
