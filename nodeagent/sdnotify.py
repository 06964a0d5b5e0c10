"""systemd's notify protocol (sd_notify(3)) over a plain AF_UNIX datagram socket.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace) and waits for ``READY=1`` before it considers the unit started; with
``WatchdogSec=`` it also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``) and kills the
service unless ``WATCHDOG=1`` arrives within that time. The protocol is newline-separated
``KEY=VALUE`` assignments in one datagram, so no library is needed.

The agent says ``READY=1`` once the runtime has been listed and its pods adopted (never
after a control-plane round trip: a start while the API is down must not time out), and
feeds the watchdog at half the interval, as systemd recommends, only while its event loop
is healthy: ``Watchdog.run`` checks how late its own timer fired, so an event loop blocked
by a stuck call stops the pings and systemd restarts the agent (pods keep running:
KillMode=process). Outside systemd every call is a no-op.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping

import structlog

log = structlog.get_logger("nodeagent.sdnotify")


def _address(raw: str) -> str | bytes:
    # "@name" is the abstract namespace: a leading NUL byte in sun_path.
    return b"\0" + raw[1:].encode() if raw.startswith("@") else raw


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.socket_path = env.get("NOTIFY_SOCKET", "")
        self.watchdog_s = _watchdog_seconds(env)
        self.sent = 0

    @property
    def enabled(self) -> bool:
        return bool(self.socket_path)

    def notify(self, **fields: str) -> bool:
        """Send ``KEY=VALUE`` lines (``notify(READY="1", STATUS="...")``); False if not sent."""
        if not self.enabled:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(_address(self.socket_path))
                sock.sendall(message)
        except OSError as exc:
            log.warning("sd_notify_failed", socket=self.socket_path, error=str(exc))
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify(READY="1", **({"STATUS": status} if status else {}))

    def stopping(self) -> bool:
        return self.notify(STOPPING="1")


def _watchdog_seconds(env: Mapping[str, str]) -> float:
    """The watchdog interval meant for this process, or 0 (none, or another process's)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return 0.0
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return 0.0
    return usec / 1e6 if usec > 0 else 0.0


class Watchdog:
    """Pings ``WATCHDOG=1`` every half interval while ``healthy()`` and the loop is on time."""

    def __init__(self, notifier: Notifier, *, healthy: Callable[[], bool] = lambda: True) -> None:
        self.notifier = notifier
        self.healthy = healthy
        self.pings = 0
        self.missed = 0

    async def run(self) -> None:
        interval = self.notifier.watchdog_s / 2
        if not self.notifier.enabled or interval <= 0:
            await asyncio.Event().wait()  # nothing to feed: stay parked
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval
            await asyncio.sleep(interval)
            late = loop.time() - due
            # A timer that fires a whole half-interval late means the loop was blocked.
            if late < interval and self.healthy():
                if self.notifier.notify(WATCHDOG="1"):
                    self.pings += 1
            else:
                self.missed += 1
                log.warning("watchdog_withheld", late_s=round(late, 3))
