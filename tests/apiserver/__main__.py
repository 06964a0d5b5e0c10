"""Run the test API server as a process, e.g. for agents in other network namespaces.

    python -m tests.apiserver --host 10.200.0.1 --port 6443 --kubeconfig-out admin.kubeconfig \\
        [--node-kubeconfig n1=n1.kubeconfig ...] [--bare-node-kubeconfig n2=n2.kubeconfig ...]
        [--plain-http] [--state-dir DIR] \\
        [--history N] [--bookmark-interval S] [--token T] [--min-token-seconds S] \\
        [--node-ipam 10.244.0.0/16/24 [--node-ipam-delay S]]

When it serves, it prints one JSON line on stdout: ``url``, ``port``, ``kubeconfig``, ``ca``
(the CA file, absent with --plain-http) and ``pid``. SIGTERM or SIGINT stop it. With
``--state-dir`` the CA is kept there, and the objects are saved there on exit and loaded at
start: a stopped-and-started process keeps the cluster, with an empty watch history (a
resume from an older version gets 410, as after an etcd compaction). The ``/fake/v1/`` hooks
(faults, history, restart, request log) work as in-process; see ``process.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from tests.apiserver.controllers import DEFAULT_NODE_MONITOR_GRACE_S
from tests.apiserver.ipam import DEFAULT_DELAY_S, parse_ipam
from tests.apiserver.server import ApiServer

STATE_FILE = "objects.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tests.apiserver", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=0, help="port (0: any free one)")
    p.add_argument("--advertise-address", default=None, help="address for the kubernetes Service")
    p.add_argument("--kubeconfig-out", type=Path, required=True, help="admin kubeconfig to write")
    p.add_argument(
        "--node-kubeconfig",
        action="append",
        default=[],
        metavar="NODE=PATH",
        help="write a client-certificate kubeconfig for system:node:NODE, bound to "
        "system:node-proxier",
    )
    p.add_argument(
        "--bare-node-kubeconfig",
        action="append",
        default=[],
        metavar="NODE=PATH",
        help="the same without the system:node-proxier binding (the Node authorizer alone)",
    )
    p.add_argument("--plain-http", action="store_true", help="serve HTTP instead of HTTPS")
    p.add_argument("--no-auth", action="store_true", help="let anonymous requests through")
    p.add_argument("--token", default=None, help="the admin bearer token (default: random)")
    p.add_argument("--state-dir", type=Path, default=None, help="keep CA and objects here")
    p.add_argument("--history", type=int, default=1000, help="watch history size")
    p.add_argument("--bookmark-interval", type=float, default=60.0, help="seconds")
    p.add_argument("--min-token-seconds", type=int, default=600, help="TokenRequest floor")
    p.add_argument(
        "--node-monitor-grace-period",
        type=float,
        default=DEFAULT_NODE_MONITOR_GRACE_S,
        help="seconds without a Lease renewal before a Node turns NotReady (Unknown)",
    )
    p.add_argument(
        "--node-ipam",
        type=parse_ipam,
        default=None,
        metavar="CIDR/MASK",
        help="assign each new Node a podCIDR, e.g. 10.244.0.0/16/24 (cluster CIDR, node mask)",
    )
    p.add_argument(
        "--node-ipam-delay",
        type=float,
        default=DEFAULT_DELAY_S,
        help="seconds between a Node's creation and its podCIDR",
    )
    return p.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    api = ApiServer(
        host=args.host,
        port=args.port,
        tls=not args.plain_http,
        require_auth=not args.no_auth,
        token=args.token,
        history_size=args.history,
        bookmark_interval=args.bookmark_interval,
        min_token_seconds=args.min_token_seconds,
        state_dir=args.state_dir,
        advertise_address=args.advertise_address,
        node_monitor_grace_s=args.node_monitor_grace_period,
        node_ipam=args.node_ipam,
        node_ipam_delay_s=args.node_ipam_delay,
    )
    state = args.state_dir / STATE_FILE if args.state_dir else None
    if state is not None and state.exists():
        api.store.load(json.loads(state.read_text()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await api.start()
    try:
        api.write_kubeconfig(args.kubeconfig_out)
        for spec in args.node_kubeconfig:
            node, _, path = spec.partition("=")
            api.node_kubeconfig(Path(path), node)
        for spec in args.bare_node_kubeconfig:
            node, _, path = spec.partition("=")
            api.node_kubeconfig(Path(path), node, node_proxier=False)
        ready = {
            "url": api.url,
            "port": api.port,
            "kubeconfig": str(args.kubeconfig_out),
            "pid": os.getpid(),
        }
        if api.tls:
            ready["ca"] = str(api.pki.ca_path)
        print(json.dumps(ready), flush=True)
        await stop.wait()
    finally:
        await api.close()
        if state is not None:
            tmp = state.with_suffix(".tmp")
            tmp.write_text(json.dumps(api.store.dump()))
            tmp.replace(state)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
