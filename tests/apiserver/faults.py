"""Fault injection: make the next matching requests fail with a chosen status.

A rule matches on HTTP method, resource plural and subresource and fires ``count`` times,
answering with a real Status body (an API server error, not a broken connection), before the
request touches the store. Shortcuts cover what node-agent tests need: failing status writes
(``fail_status_writes``) and a spurious write conflict (``conflict_next_write``). Restarts and
history loss are the server's (``ApiServer.restart``, ``ApiServer.drop_history``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.apiserver.errors import ApiError

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ANY = "*"

_REASONS = {
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class FaultRule:
    count: int
    code: int
    methods: frozenset[str] = WRITES
    resource: str = ANY  # plural, or ANY
    subresource: str | None = ANY  # None: the object itself; ANY: whatever
    message: str = ""
    fired: int = field(default=0)

    def matches(self, method: str, resource: str, subresource: str | None) -> bool:
        if method not in self.methods:
            return False
        if self.resource != ANY and resource != self.resource:
            return False
        return self.subresource == ANY or self.subresource == subresource

    def error(self) -> ApiError:
        reason = _REASONS.get(self.code, "InternalError")
        message = self.message or f"injected fault ({self.code} {reason})"
        if self.code == 409:
            message = self.message or (
                "Operation cannot be fulfilled: the object has been modified; please apply "
                "your changes to the latest version and try again"
            )
        return ApiError(self.code, reason, message)


class Faults:
    def __init__(self) -> None:
        self.rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def fail_requests(
        self,
        count: int = 1,
        *,
        code: int = 500,
        methods: frozenset[str] | set[str] = WRITES,
        resource: str = ANY,
        subresource: str | None = ANY,
        message: str = "",
    ) -> FaultRule:
        return self.add(FaultRule(count, code, frozenset(methods), resource, subresource, message))

    def fail_status_writes(
        self, count: int = 1, *, code: int = 500, resource: str = ANY
    ) -> FaultRule:
        """The next ``count`` PUT/PATCH on a ``/status`` subresource fail."""
        return self.fail_requests(
            count, code=code, methods={"PUT", "PATCH"}, resource=resource, subresource="status"
        )

    def conflict_next_write(self, count: int = 1, *, resource: str = ANY) -> FaultRule:
        """The next ``count`` writes (POST/PUT/PATCH/DELETE) get 409 Conflict."""
        return self.fail_requests(count, code=409, resource=resource)

    def check(self, method: str, resource: str, subresource: str | None) -> ApiError | None:
        for rule in self.rules:
            if rule.count > 0 and rule.matches(method, resource, subresource):
                rule.count -= 1
                rule.fired += 1
                return rule.error()
        return None

    def clear(self) -> None:
        self.rules.clear()

    def from_json(self, body: dict[str, Any]) -> FaultRule:
        """A rule from the control endpoint's JSON (same names as ``fail_requests``)."""
        sub = body.get("subresource", ANY)
        return self.fail_requests(
            int(body.get("count", 1)),
            code=int(body.get("code", 500)),
            methods=set(body.get("methods") or WRITES),
            resource=str(body.get("resource", ANY)),
            subresource=None if sub in (None, "") else str(sub),
            message=str(body.get("message", "")),
        )
