"""The kubelet API's TLS: the serving certificate and which client certificates are trusted.

With ``--tls-cert-file``/``--tls-private-key-file`` those files serve. Without, as the kubelet
does (``pki/kubelet.crt`` in its root dir), a self-signed certificate is made once into the
state dir, with the node's name, ``localhost`` and its addresses as SANs; it is made again
when those names change (a new node IP), and otherwise reused across restarts so clients that
pinned it keep working.

Client certificates are asked for but optional. With ``--client-ca-file``, OpenSSL verifies
a presented certificate against it during the handshake: a certificate of a foreign CA fails
the handshake itself (the kubelet, in Go, answers it with a 401 instead; either way it is
refused). A client without a certificate goes on to the token and anonymous checks.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nodeagent.fsutil import write_file_atomic

VALID_DAYS = 365


@dataclass(frozen=True)
class ServingFiles:
    cert: Path
    key: Path


def self_signed(directory: Path, node_name: str, addresses: tuple[str, ...]) -> ServingFiles:
    """The self-signed pair in ``directory``, made (again) unless it already names the node
    and its addresses. Blocking: run it in a thread."""
    files = ServingFiles(directory / "kubelet.crt", directory / "kubelet.key")
    wanted = _sans(node_name, addresses)
    if _current_sans(files.cert) == wanted and files.key.is_file():
        return files
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node_name}@nodeagent")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(wanted), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file_atomic(files.key, key_pem, mode=0o600)
    write_file_atomic(files.cert, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return files


def _sans(node_name: str, addresses: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(node_name), x509.DNSName("localhost")]
    ips = dict.fromkeys(("127.0.0.1", *addresses))
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips if ip]
    return names


def _current_sans(path: Path) -> list[x509.GeneralName] | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    return list(ext.value)


def server_context(files: ServingFiles, client_ca: Path | None) -> ssl.SSLContext:
    """TLS 1.2+; client certificates verified against ``client_ca`` when one is given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(files.cert, files.key)
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_OPTIONAL
    return context
