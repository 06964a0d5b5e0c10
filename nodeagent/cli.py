"""Command line: ``nodeagent run | status | describe | logs | version``.

Thin on purpose: parse arguments, call into the packages, turn their errors into exit codes.

- ``run`` builds the Config (flags override environment override file override defaults;
  see nodeagent.config), configures logging and hands over to ``nodeagent.agent``, which is
  imported only here, so ``status`` and ``version`` start fast and work on a machine where
  the daemon's heavy dependencies (grpc, pyroute2, docker) are broken or missing.
- ``status`` reads the running agent's snapshot over its unix socket and renders it (the
  overview, or the ``pods``, ``services`` or ``node`` view; ``--watch`` redraws it in place);
  ``describe pod`` renders one pod from the same snapshot; ``logs`` learns the log directory
  from it. All three find the socket the same way (``--status-socket``, then
  ``$NODEAGENT_STATUS_SOCKET``, then the default), and colors are used only on a terminal.

Exit codes: 0 success; 1 an operation failed (agent unreachable); 2 bad usage or bad
configuration (argparse's convention, so scripts can tell "fix your flags" from "try later").
Expected failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from nodeagent import podlogs, version
from nodeagent.config import (
    DEFAULT_STATUS_SOCKET,
    ConfigError,
    add_flags,
    env_var,
    load_config,
)
from nodeagent.log import configure_logging
from nodeagent.server.client import StatusUnavailable, fetch_status
from nodeagent.server.colors import colorize
from nodeagent.server.describe import PodNotFound, find_pod, render_pod
from nodeagent.server.nodeview import render_node
from nodeagent.server.render import in_namespace, render_status

PROG = version.PROG
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STATUS_VIEWS = ("pods", "services", "node")
# The snapshot keys each subview shows with --json (the overview prints everything).
_VIEW_KEYS = {
    "pods": ("pods", "events"),
    "services": ("services", "proxy"),
    "node": ("agent", "node", "cluster", "network", "proxy"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="A node agent: the kubelet's and kube-proxy's work in one daemon."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run the agent in the foreground",
        description="Run the agent. Every option can also be set in the --config file or as "
        "NODEAGENT_<OPTION> in the environment (e.g. NODEAGENT_NODE_NAME); flags win.",
    )
    run.add_argument("--config", metavar="FILE", help="YAML file with settings (keys as below)")
    add_flags(run)  # one per setting, from its declaration in Config
    run.set_defaults(handler=_cmd_run)

    status = commands.add_parser("status", help="show the running agent's node and pods")
    status.add_argument(
        "view", nargs="?", choices=STATUS_VIEWS, help="only the pods, services or node view"
    )
    status.add_argument("-n", "--namespace", help="only this namespace's pods and services")
    status.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")
    status.add_argument("-w", "--watch", action="store_true", help="redraw until Ctrl-C")
    status.add_argument(
        "--interval", type=_seconds, default=2.0, metavar="SECONDS", help="for --watch (2)"
    )
    _socket_flag(status)
    status.set_defaults(handler=_cmd_status)

    describe = commands.add_parser("describe", help="show one pod in depth, with its events")
    describe.add_argument("kind", choices=("pod", "pods", "po"), metavar="pod")
    describe.add_argument("name", metavar="NAME")
    describe.add_argument("-n", "--namespace", default="default")
    describe.add_argument("--json", action="store_true", help="the pod's entry and its events")
    _socket_flag(describe)
    describe.set_defaults(handler=_cmd_describe)

    logs = commands.add_parser("logs", help="print a container's log")
    logs.add_argument("pod", metavar="POD")
    logs.add_argument("-n", "--namespace", default="default")
    logs.add_argument("-c", "--container", help="needed when the pod has several containers")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-p", "--previous", action="store_true", help="the previous instance")
    logs.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    logs.add_argument("--pod-log-dir", metavar="DIR", help="default: the agent's, as it reports")
    _socket_flag(logs)
    logs.set_defaults(handler=_cmd_logs)

    version_cmd = commands.add_parser("version", help="print the version")
    version_cmd.set_defaults(handler=_cmd_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
        return code
    except KeyboardInterrupt:
        return 130  # the shell's convention for SIGINT
    except BrokenPipeError:
        # `nodeagent status | head`: the reader left; not our failure. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log_format, config.log_level)
    # Imported here, not at the top: see the module docstring.
    from nodeagent import agent

    return asyncio.run(agent.run(config))


def _socket_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status-socket",
        metavar="PATH",
        help=f"the agent's status socket (default: ${env_var('status_socket')} "
        f"or {DEFAULT_STATUS_SOCKET})",
    )


def socket_path(args: argparse.Namespace) -> str:
    """The status socket a client command talks to: flag, then environment, then default."""
    flag = getattr(args, "status_socket", None)
    return str(flag or os.environ.get(env_var("status_socket")) or DEFAULT_STATUS_SOCKET)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.1 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: choose between 0.1 and 3600 seconds")
    return value


def _use_color() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def _status_text(args: argparse.Namespace) -> str:
    """One rendering of the status (raises StatusUnavailable)."""
    snapshot = fetch_status(socket_path(args))
    now = datetime.now(UTC)
    if args.json:
        if args.namespace is not None:
            snapshot = in_namespace(snapshot, args.namespace)
        if args.view is not None:
            snapshot = {k: snapshot[k] for k in _VIEW_KEYS[args.view] if k in snapshot}
        return json.dumps(snapshot, indent=2) + "\n"
    if args.view == "node":
        text = render_node(snapshot, now)
    else:
        text = render_status(snapshot, now, view=args.view or "all", namespace=args.namespace)
    return colorize(text) if _use_color() else text


def _cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(args)
    try:
        text = _status_text(args)
    except StatusUnavailable as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(text, end="")
    return EXIT_OK


def _watch(args: argparse.Namespace) -> int:
    """Redraw every ``--interval`` until Ctrl-C, as watch(1) does; an unreachable agent is
    shown in place (it may be restarting) rather than ending the watch."""
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                body = _status_text(args)
            except StatusUnavailable as e:
                body = f"{PROG}: {e}\n"
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
            header = f"Every {args.interval:g}s: {PROG} status   {stamp}\n\n"
            # Home and clear-to-end rather than a full clear: no flicker on a slow terminal.
            prefix, suffix = ("\x1b[H", "\x1b[J") if tty else ("", "\n")
            sys.stdout.write(prefix + header + body + suffix)
            sys.stdout.flush()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        if tty:
            sys.stdout.write("\n")
        return EXIT_OK


def _cmd_describe(args: argparse.Namespace) -> int:
    try:
        snapshot = fetch_status(socket_path(args))
        if args.json:
            pod = dict(find_pod(snapshot, args.namespace, args.name))
            pod["events"] = [
                e
                for e in snapshot.get("events") or []
                if (e.get("involvedObject") or {}).get("name") == args.name
                and (e.get("involvedObject") or {}).get("namespace") == args.namespace
            ]
            print(json.dumps(pod, indent=2))
            return EXIT_OK
        text = render_pod(snapshot, args.namespace, args.name, datetime.now(UTC))
    except (StatusUnavailable, PodNotFound) as e:
        message = e.args[0] if isinstance(e, PodNotFound) else str(e)
        print(f"{PROG}: {message}", file=sys.stderr)
        return EXIT_FAILED
    print(colorize(text) if _use_color() else text, end="")
    return EXIT_OK


def _cmd_logs(args: argparse.Namespace) -> int:
    try:
        snapshot = fetch_status(socket_path(args))
        log_dir = args.pod_log_dir or snapshot.get("agent", {}).get("podLogDir", "/var/log/pods")
        log = podlogs.find_log(
            snapshot,
            Path(log_dir),
            pod=args.pod,
            namespace=args.namespace,
            container=args.container,
            previous=args.previous,
        )
    except (StatusUnavailable, podlogs.LogsError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_FAILED
    for record in podlogs.tail(log, args.tail):
        print(record.text)
    if args.follow:
        sys.stdout.flush()
        podlogs.follow(log, sys.stdout)
    return EXIT_OK


def _cmd_version(args: argparse.Namespace) -> int:
    print(f"{PROG} {version.agent_version()} (kubelet {version.kubelet_version()})")
    return EXIT_OK
