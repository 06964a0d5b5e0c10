"""The sd_notify protocol against a real AF_UNIX datagram socket, as systemd listens."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.sdnotify import Notifier, Watchdog
from tests.harness.wait import async_wait_for


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()


def messages(sock: socket.socket) -> list[str]:
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)
    return out


def test_ready_is_one_datagram_of_assignments(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.ready(status="3 pods adopted")
    assert sock.recv(4096).decode() == "READY=1\nSTATUS=3 pods adopted"
    assert notifier.stopping()
    assert sock.recv(4096).decode() == "STOPPING=1"


def test_abstract_socket_names_start_with_at() -> None:
    name = f"nodeagent-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_outside_systemd_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()


def test_a_vanished_socket_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    assert not Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready()


def test_watchdog_interval_is_for_this_process_only() -> None:
    usec = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000"}
    assert Notifier(usec).watchdog_s == 3.0
    assert Notifier({**usec, "WATCHDOG_PID": str(os.getpid())}).watchdog_s == 3.0
    assert Notifier({**usec, "WATCHDOG_PID": "1"}).watchdog_s == 0.0
    assert Notifier({**usec, "WATCHDOG_USEC": "junk"}).watchdog_s == 0.0


async def _run_for_pings(watchdog: Watchdog, sock: socket.socket, count: int) -> list[str]:
    task = asyncio.create_task(watchdog.run())
    got: list[str] = []
    try:
        async with asyncio.timeout(10):
            while len(got) < count:
                got += await asyncio.to_thread(messages, sock)
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
    return got


async def test_watchdog_pings_while_healthy(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    watchdog = Watchdog(notifier)
    got = await _run_for_pings(watchdog, sock, 3)
    assert got[:3] == ["WATCHDOG=1"] * 3
    assert watchdog.pings >= 3


async def test_watchdog_withholds_pings_while_unhealthy(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    watchdog = Watchdog(notifier, healthy=lambda: False)
    task = asyncio.create_task(watchdog.run())
    try:
        await async_wait_for(lambda: watchdog.missed >= 3, 10, 0.02, message="3 withheld pings")
    finally:
        task.cancel()
    assert messages(sock) == []
    assert watchdog.pings == 0


async def test_a_blocked_event_loop_withholds_the_ping(
    listener: tuple[socket.socket, str],
) -> None:
    _sock, path = listener
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    watchdog = Watchdog(notifier)
    task = asyncio.create_task(watchdog.run())
    try:
        await asyncio.sleep(0)  # let it arm its first timer
        # Block the loop well past a whole interval, as a stuck call would.
        time.sleep(0.5)  # noqa: ASYNC251
        await async_wait_for(lambda: watchdog.missed >= 1, 10, 0.01, message="a withheld ping")
    finally:
        task.cancel()
    assert watchdog.missed == 1
