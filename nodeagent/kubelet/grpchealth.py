"""gRPC health checking (``grpc.health.v1.Health/Check``) for grpc probes, without stubs.

Both messages have one field (``HealthCheckRequest.service = 1``, a string;
``HealthCheckResponse.status = 1``, an enum), so they are encoded here by hand and sent
through grpcio's generic unary call with bytes in and out: no generated code, no extra
dependency. Each check dials a fresh channel, as the kubelet does, so a probe never rides
on a connection that an earlier, now dead, container left behind.

Failures read the way the kubelet words them, because operators search for those strings.
"""

from __future__ import annotations

import grpc
import grpc.aio

METHOD = "/grpc.health.v1.Health/Check"
SERVING = 1
STATUS_NAMES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


class MalformedResponse(ValueError):
    """The bytes are not a HealthCheckResponse."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise MalformedResponse("truncated varint")


def encode_request(service: str) -> bytes:
    """HealthCheckRequest{service}; the empty service is the empty message."""
    if not service:
        return b""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw


def decode_status(data: bytes) -> int:
    """The status of a HealthCheckResponse; unknown fields are skipped, as protobuf does."""
    status, pos = 0, 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            if field == 1:
                status = value
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise MalformedResponse(f"unsupported wire type {wire}")
        if pos > len(data):
            raise MalformedResponse("truncated field")
    return status


async def check(host: str, port: int, service: str, *, timeout_s: float) -> tuple[bool, str]:
    """(healthy, message) of one Check call against host:port."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary(METHOD)  # no serializers: bytes in, bytes out
            response = await call(encode_request(service), timeout=timeout_s)
    except grpc.RpcError as err:
        return False, _rpc_error_message(err, timeout_s)
    try:
        status = decode_status(bytes(response))
    except MalformedResponse as exc:
        return False, f"malformed health response: {exc}"
    name = STATUS_NAMES.get(status, str(status))
    if status != SERVING:
        return False, f'service unhealthy (responded with "{name}")'
    return True, name


def _rpc_error_message(err: grpc.RpcError, timeout_s: float) -> str:
    code = err.code() if hasattr(err, "code") else None
    details = err.details() if hasattr(err, "details") else str(err)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return (
            "this server does not implement the grpc health protocol "
            f"(grpc.health.v1.Health): {details}"
        )
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"timeout: health rpc did not complete within {timeout_s:g}s"
    name = code.name if code is not None else "UNKNOWN"
    return f"rpc error: code = {name} desc = {details}"
