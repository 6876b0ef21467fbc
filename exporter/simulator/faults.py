"""The fault queue, and the replies of the faults that replace a whole reply (see
:class:`~exporter.simulator.records.FaultKind`); the writer applies the others."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

from aiohttp import web

from exporter.simulator.errors import ERRORS, error_response, mask_key, presented_key
from exporter.simulator.ledger import Ledger
from exporter.simulator.records import RECORD, Fault, FaultKind
from exporter.simulator.writer import JSON_TYPE, dumps

# Faults that replace the whole reply, before authentication: they model a broken upstream or a
# proxy in front of it. The others alter an otherwise normal reply.
REPLACING = frozenset(
    {FaultKind.STATUS, FaultKind.HTML, FaultKind.NON_JSON, FaultKind.BODY, FaultKind.DROP}
)

_HTML_502 = b"""<html>
<head><title>502 Bad Gateway</title></head>
<body>
<center><h1>502 Bad Gateway</h1></center>
<hr><center>nginx</center>
</body>
</html>
"""


class FaultQueue:
    """Faults waiting for requests; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault | FaultKind | str, **params: Any) -> Fault:
        if not isinstance(fault, Fault):
            fault = Fault(FaultKind(fault), **params)
        elif params:
            raise TypeError("pass either a Fault or a kind with parameters")
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending(self) -> list[Fault]:
        """Faults still pending; copies."""
        with self._lock:
            return [replace(f) for f in self._faults]

    def take(self, path: str) -> Fault | None:
        """Consume one use of the oldest fault that matches ``path``, if any."""
        with self._lock:
            fault = next((f for f in self._faults if f.matches(path)), None)
            if fault is not None and fault.times is not None:
                fault.times -= 1
                if fault.times == 0:
                    self._faults.remove(fault)
            return fault


def replacing_reply(request: web.Request, fault: Fault, ledger: Ledger) -> web.StreamResponse:
    """The reply of a fault in :data:`REPLACING` (a DROP is logged as status 0 here)."""
    if fault.kind == FaultKind.STATUS:
        status = fault.status or 500
        message = fault.message
        if status == 401 and message is None:
            key = presented_key(request, request[RECORD].endpoint == "anthropic")
            message = ERRORS[401][0].replace("****", mask_key(key))
        return error_response(status, message, fault.error_type)
    if fault.kind == FaultKind.HTML:
        return web.Response(body=_HTML_502, status=fault.status or 502, content_type="text/html")
    if fault.kind == FaultKind.NON_JSON:
        body = fault.body if fault.body is not None else b"upstream says: this is not JSON"
        return _raw(body, fault.status or 200, fault.content_type or JSON_TYPE)
    if fault.kind == FaultKind.BODY:
        return _raw(fault.body, fault.status or 200, fault.content_type or JSON_TYPE)
    # DROP: not a byte; aiohttp quietly gives up writing the response we return. Status 0
    # in the log means "no response".
    ledger.finish(request[RECORD], 0)
    if request.transport is not None:
        request.transport.abort()
    return web.Response()


def _raw(body: Any, status: int, content_type: str) -> web.Response:
    if isinstance(body, str):
        data = body.encode()
    elif isinstance(body, bytes):
        data = body
    else:
        data = dumps(body)
    response = web.Response(body=data, status=status)
    response.headers["Content-Type"] = content_type
    return response
