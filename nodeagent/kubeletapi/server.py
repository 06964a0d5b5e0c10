"""The kubelet API server as the daemon starts it: TLS, the checks, the routes."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from nodeagent.kubeletapi import auth, certs, stats
from nodeagent.kubeletapi.handlers import Handlers, NodeView
from nodeagent.kubeletapi.wire import HttpsServer
from nodeagent.log import get_logger

log = get_logger("nodeagent.kubeletapi")


@dataclass(frozen=True)
class ApiSettings:
    bind: str  # host:port
    state_dir: Path
    node_ip: str
    tls_cert_file: Path | None
    tls_private_key_file: Path | None
    client_ca_file: Path | None
    anonymous_auth: bool
    token_webhook: bool
    webhook_authz: bool


class KubeletApi:
    def __init__(self, settings: ApiSettings, view: NodeView, review: auth.Review | None) -> None:
        """``review`` asks the API (TokenReview, SubjectAccessReview); None standalone."""
        self._settings = settings
        self._view = view
        self._review = review
        self._server: HttpsServer | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            return int(self._settings.bind.rpartition(":")[2])
        return self._server.address[1]

    async def start(self) -> None:
        """Listen; OSError or ssl.SSLError (bad files, a taken port) go to the caller."""
        s = self._settings
        if (s.tls_cert_file is None) != (s.tls_private_key_file is None):
            raise ValueError("--tls-cert-file and --tls-private-key-file go together")
        if s.tls_cert_file is not None and s.tls_private_key_file is not None:
            files = certs.ServingFiles(s.tls_cert_file, s.tls_private_key_file)
        else:
            addresses = (s.node_ip,) if s.node_ip else ()
            files = await asyncio.to_thread(
                certs.self_signed, s.state_dir / "pki", self._view.node_name, addresses
            )
        context = certs.server_context(files, s.client_ca_file)
        handlers = Handlers(
            self._view,
            authenticator=auth.Authenticator(
                anonymous=s.anonymous_auth, review=self._review if s.token_webhook else None
            ),
            authorizer=auth.Authorizer(self._review if s.webhook_authz else None),
            collector=stats.Collector(
                stats.Sources(
                    node_name=self._view.node_name,
                    state_dir=s.state_dir,
                    pod_log_dir=self._view.pod_log_dir,
                    started_at=time.time(),
                )
            ),
        )
        host, _, port = s.bind.rpartition(":")
        server = HttpsServer(host.strip("[]"), int(port), context, handlers.handle)
        await server.start()
        self._server = server
        log.info("kubelet_api_listening", bind=s.bind, cert=str(files.cert))

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.close()
