"""Sending replies: JSON bodies and SSE streams, through the RESET / STALL / HUGE faults of the
request, and the keep-alives sent while "waiting for inference"."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from exporter.simulator.records import FAULT, Event, Fault, FaultKind
from exporter.simulator.settings import SimSettings

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def _pad(obj: dict[str, Any], size: int) -> dict[str, Any]:
    """``obj`` with a filler field so that its JSON is ``size`` bytes (or as small as it gets)."""
    padded = {**obj, "x_sim_padding": ""}
    missing = size - len(dumps(padded))
    if missing > 0:
        padded["x_sim_padding"] = "x" * missing
    return padded


def _sse(payload: dict[str, Any] | str, event: str | None = None) -> bytes:
    data = payload if isinstance(payload, str) else dumps(payload).decode()
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data}\n\n".encode()


def no_usage(request: web.Request) -> bool:
    """Whether a NO_USAGE fault asks to leave usage out of this request's reply."""
    fault: Fault | None = request[FAULT]
    return fault is not None and fault.kind == FaultKind.NO_USAGE


class Writer:
    """Writes replies with the pacing of the current settings."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings

    async def wait_for_inference(
        self, request: web.Request, stream: bool
    ) -> web.StreamResponse | None:
        """Before inference "starts": send headers, then keep-alives, for keepalive_delay."""
        delay = self.settings.keepalive_delay
        if delay <= 0:
            return None
        response = web.StreamResponse(status=200)
        response.headers["Content-Type"] = SSE_TYPE if stream else JSON_TYPE
        await response.prepare(request)
        keepalive = b": keep-alive\n\n" if stream else b"\n"
        loop = asyncio.get_running_loop()
        end = loop.time() + delay
        while (remaining := end - loop.time()) > 0:
            await asyncio.sleep(min(self.settings.keepalive_interval, remaining))
            if loop.time() < end:
                await response.write(keepalive)
        return response

    async def send_json(
        self,
        request: web.Request,
        obj: dict[str, Any],
        response: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """A JSON reply, through the RESET / STALL / HUGE faults of this request."""
        fault: Fault | None = request[FAULT]
        if fault is not None and fault.kind == FaultKind.HUGE:
            obj = _pad(obj, fault.size)
        body = dumps(obj)
        if response is None:
            response = web.StreamResponse(status=200)
            response.headers["Content-Type"] = JSON_TYPE
            response.content_length = len(body)
            await response.prepare(request)
        if fault is not None and fault.kind in (FaultKind.RESET, FaultKind.STALL):
            half = len(body) // 2
            await response.write(body[:half])
            if fault.kind == FaultKind.RESET:
                if request.transport is not None:
                    request.transport.abort()
                return response
            await asyncio.sleep(fault.seconds)
            body = body[half:]
        await response.write(body)
        await response.write_eof()
        return response

    async def send_events(
        self,
        request: web.Request,
        events: list[Event],
        response: web.StreamResponse | None = None,
    ) -> web.StreamResponse:
        """SSE ``(event name, payload)`` items, ``chunk_interval`` apart, through the RESET /
        STALL / HUGE faults of this request."""
        fault: Fault | None = request[FAULT]
        if fault is not None and fault.kind == FaultKind.HUGE and isinstance(events[0][1], dict):
            events[0] = (events[0][0], _pad(events[0][1], fault.size))
        if response is None:
            response = web.StreamResponse(status=200)
            response.headers["Content-Type"] = SSE_TYPE
            response.headers["Cache-Control"] = "no-cache"
            await response.prepare(request)
        # A reset/stall point past the end still fires: right before the last event.
        fault_at = min(fault.after_chunks, len(events) - 1) if fault is not None else -1
        for i, (event, payload) in enumerate(events):
            if i == fault_at and fault is not None and fault.kind == FaultKind.RESET:
                if request.transport is not None:
                    request.transport.abort()
                return response
            if i == fault_at and fault is not None and fault.kind == FaultKind.STALL:
                await asyncio.sleep(fault.seconds)
            if i > 0 and self.settings.chunk_interval > 0:
                await asyncio.sleep(self.settings.chunk_interval)
            await response.write(_sse(payload, event))
        await response.write_eof()
        return response
