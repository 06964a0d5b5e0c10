"""A throwaway PKI and kubeconfig files for the test API server.

The layout copies what kubeadm makes (the upstream doc "PKI certificates and requirements"):
one CA; a serving certificate whose SANs hold ``kubernetes``, ``kubernetes.default``,
``kubernetes.default.svc``, ``kubernetes.default.svc.cluster.local``, ``localhost``, the
``kubernetes`` Service IP, 127.0.0.1 and the addresses the test listens on; client
certificates whose CN is the user name and whose O entries are its groups (a node is
``system:node:<name>`` in ``system:nodes``). Keys are ECDSA P-256: quick to make.

``load_or_create`` reuses a directory's CA and keys, so a restarted server process keeps the
CA that agents already trust.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.apiserver.allocators import KUBERNETES_SERVICE_IP

DNS_NAMES = (
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
    "localhost",
)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str, orgs: tuple[str, ...] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sign(
    builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .public_key(key.public_key())
    )


@dataclass(frozen=True)
class TLSBundle:
    """CA and serving certificate files in ``directory``."""

    directory: Path

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.crt"

    @property
    def ca_key_path(self) -> Path:
        return self.directory / "ca.key"

    @property
    def cert_path(self) -> Path:
        return self.directory / "apiserver.crt"

    @property
    def key_path(self) -> Path:
        return self.directory / "apiserver.key"

    @property
    def ca_pem(self) -> str:
        return self.ca_path.read_text()

    @classmethod
    def load_or_create(cls, directory: Path, hosts: tuple[str, ...]) -> TLSBundle:
        """Reuse the CA in ``directory`` (or make one) and a serving cert covering ``hosts``."""
        directory.mkdir(parents=True, exist_ok=True)
        bundle = cls(directory)
        if not (bundle.ca_path.exists() and bundle.ca_key_path.exists()):
            key = _key()
            subject = _name("nodeagent-test-ca")
            cert = (
                _sign(x509.CertificateBuilder(), key, 3650)
                .subject_name(subject)
                .issuer_name(subject)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .sign(key, hashes.SHA256())
            )
            bundle.ca_key_path.write_bytes(_key_pem(key))
            bundle.ca_key_path.chmod(0o600)
            bundle.ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        cert_pem, key_pem = bundle.issue("kube-apiserver", server_hosts=hosts)
        bundle.cert_path.write_bytes(cert_pem)
        bundle.key_path.write_bytes(key_pem)
        bundle.key_path.chmod(0o600)
        return bundle

    def issue(
        self,
        common_name: str,
        organizations: tuple[str, ...] = (),
        *,
        server_hosts: tuple[str, ...] | None = None,
    ) -> tuple[bytes, bytes]:
        """A (cert PEM, key PEM) pair signed by the CA: a client cert, or a serving one."""
        ca_key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise TypeError("the CA key must be an EC key")
        ca_cert = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
        key = _key()
        builder = (
            _sign(x509.CertificateBuilder(), key, 365)
            .subject_name(_name(common_name, organizations))
            .issuer_name(ca_cert.subject)
        )
        if server_hosts is not None:
            names: list[x509.GeneralName] = [x509.DNSName(n) for n in DNS_NAMES]
            ips = {"127.0.0.1", KUBERNETES_SERVICE_IP}
            for host in server_hosts:
                try:
                    ips.add(str(ipaddress.ip_address(host)))
                except ValueError:
                    if host not in DNS_NAMES:
                        names.append(x509.DNSName(host))
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in sorted(ips)]
            builder = builder.add_extension(
                x509.SubjectAlternativeName(names), critical=False
            ).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert = builder.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def server_context(self) -> ssl.SSLContext:
        """Serve the cert; verify client certs against the CA when offered (optional)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        ctx.load_verify_locations(cafile=str(self.ca_path))
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx


def _b64(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.b64encode(raw).decode()


def write_kubeconfig(
    path: Path,
    *,
    server: str,
    ca_pem: str | None = None,
    token: str | None = None,
    client_cert: tuple[bytes, bytes] | None = None,
    namespace: str = "default",
    user: str = "test-user",
) -> Path:
    """A kubeconfig with one cluster, user and (current) context."""
    cluster: dict[str, object] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = _b64(ca_pem)
    creds: dict[str, object] = {}
    if token is not None:
        creds["token"] = token
    if client_cert is not None:
        creds["client-certificate-data"] = _b64(client_cert[0])
        creds["client-key-data"] = _b64(client_cert[1])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": user, "user": creds}],
        "contexts": [
            {"name": "test", "context": {"cluster": "test", "user": user, "namespace": namespace}}
        ],
        "current-context": "test",
        "preferences": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
