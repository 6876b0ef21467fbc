"""The test-only control API, ``/_simulator/...``: the simulator's control methods over HTTP, for
tests and benchmarks that run it in another process. Unauthenticated, on purpose."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from exporter.simulator.errors import mask_key
from exporter.simulator.faults import FaultQueue
from exporter.simulator.ledger import Ledger
from exporter.simulator.records import Fault, SimAccount, to_decimal
from exporter.simulator.settings import CONFIG_FIELDS, STREAM_USAGE_STYLES, SimSettings


class ControlApi:
    """The handlers of the ``/_simulator/`` routes."""

    def __init__(self, settings: SimSettings, ledger: Ledger, faults: FaultQueue) -> None:
        self.settings = settings
        self.ledger = ledger
        self.faults = faults

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/_simulator/state", self.state)
        r.add_post("/_simulator/accounts", self.add_account)
        r.add_delete("/_simulator/accounts/{name}", self.remove_account)
        r.add_post("/_simulator/accounts/{name}/top_up", self.top_up)
        r.add_put("/_simulator/accounts/{name}/balance", self.set_balance)
        r.add_get("/_simulator/faults", self.list_faults)
        r.add_post("/_simulator/faults", self.add_fault)
        r.add_delete("/_simulator/faults", self.clear_faults)
        r.add_get("/_simulator/requests", self.requests)
        r.add_delete("/_simulator/requests", self.clear_requests)
        r.add_get("/_simulator/stats", self.stats)
        r.add_patch("/_simulator/config", self.config)

    async def state(self, request: web.Request) -> web.Response:
        accounts = [
            {
                "name": a.name,
                "api_key": mask_key(a.api_key),
                "is_available": a.is_available,
                "balances": {
                    cur: {"granted": str(g), "topped_up": str(t), "total": str(g + t)}
                    for cur, (g, t) in a.balances.items()
                },
            }
            for a in self.ledger.accounts
        ]
        faults = [f.to_json() for f in self.faults.pending()]
        config = self.settings.config()
        return web.json_response({"accounts": accounts, "faults": faults, "config": config})

    async def add_account(self, request: web.Request) -> web.Response:
        body = await _body(request)

        def build() -> SimAccount:
            balances = {}
            for cur, value in dict(body.get("balances") or {}).items():
                if isinstance(value, Mapping):
                    balances[cur] = (
                        to_decimal(value.get("granted", 0)),
                        to_decimal(value.get("topped_up", 0)),
                    )
                else:
                    granted, topped_up = value
                    balances[cur] = (to_decimal(granted), to_decimal(topped_up))
            return SimAccount(str(body["name"]), str(body["api_key"]), balances)

        try:
            account = build()
        except (KeyError, ValueError, TypeError) as exc:
            raise web.HTTPBadRequest(text=f"invalid account: {exc!r}") from None
        _call(self.ledger.add_account, account)
        return web.json_response({"ok": True}, status=201)

    async def remove_account(self, request: web.Request) -> web.Response:
        _call(self.ledger.remove_account, request.match_info["name"])
        return web.json_response({"ok": True})

    async def top_up(self, request: web.Request) -> web.Response:
        body = await _body(request)
        _call(
            self.ledger.top_up,
            request.match_info["name"],
            str(body.get("currency")),
            body.get("amount"),
        )
        return web.json_response({"ok": True})

    async def set_balance(self, request: web.Request) -> web.Response:
        body = await _body(request)
        _call(
            self.ledger.set_balance,
            request.match_info["name"],
            str(body.get("currency")),
            body.get("granted"),
            body.get("topped_up"),
        )
        return web.json_response({"ok": True})

    async def list_faults(self, request: web.Request) -> web.Response:
        return web.json_response([f.to_json() for f in self.faults.pending()])

    async def add_fault(self, request: web.Request) -> web.Response:
        body = await _body(request)
        fault = _call(Fault.from_json, body)
        self.faults.add(fault)
        return web.json_response(fault.to_json(), status=201)

    async def clear_faults(self, request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"ok": True})

    async def requests(self, request: web.Request) -> web.Response:
        return web.json_response([r.to_json() for r in self.ledger.requests()])

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.ledger.clear()
        return web.json_response({"ok": True})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({name: s.to_json() for name, s in self.ledger.stats().items()})

    async def config(self, request: web.Request) -> web.Response:
        """Change settings; ``{"time": <unix seconds>}`` freezes the clock, ``null`` unfreezes."""
        body = await _body(request)
        updates: dict[str, Any] = {}
        for key, value in body.items():
            if key == "time":
                if value is not None and not isinstance(value, int | float):
                    raise web.HTTPBadRequest(text="time: expected unix seconds or null")
                continue
            expected = CONFIG_FIELDS.get(key)
            if expected is None:
                raise web.HTTPBadRequest(text=f"unknown setting: {key}")
            if not isinstance(value, expected) or (
                isinstance(value, bool) and expected is not bool
            ):
                raise web.HTTPBadRequest(text=f"{key}: invalid value {value!r}")
            updates[key] = value
        if updates.get("stream_usage", "deepseek") not in STREAM_USAGE_STYLES:
            raise web.HTTPBadRequest(text=f"stream_usage: one of {', '.join(STREAM_USAGE_STYLES)}")
        for key, value in updates.items():
            setattr(self.settings, key, value)
        if "time" in body:
            frozen = body["time"]
            self.settings.clock = time.time if frozen is None else (lambda: float(frozen))
        return web.json_response(self.settings.config())


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise web.HTTPBadRequest(text=f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    return body


def _call(func: Callable[..., Any], *args: Any) -> Any:
    """Map the control API's exceptions to HTTP errors."""
    try:
        return func(*args)
    except KeyError as exc:
        raise web.HTTPNotFound(text=f"no such account: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
