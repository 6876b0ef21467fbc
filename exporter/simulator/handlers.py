"""The API endpoints: balance, models, chat completions, FIM, Anthropic messages, the Responses
API and the per-request web Search and Fetch calls, with the request validation they share."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from aiohttp import web

from exporter.simulator.errors import Reject, error_response, invalid, mask_key, presented_key
from exporter.simulator.generation import (
    Generation,
    anthropic_events,
    anthropic_message,
    chat_events,
    chat_object,
    fim_events,
    fim_object,
    generate,
    text_of,
)
from exporter.simulator.ledger import Ledger
from exporter.simulator.records import RECORD, Event, RequestRecord
from exporter.simulator.responses import responses_events, responses_object
from exporter.simulator.settings import SimSettings
from exporter.simulator.writer import Writer, no_usage

_CENT = Decimal("0.01")


class ApiHandlers:
    """The handlers of the API paths; they answer errors by raising :class:`Reject`."""

    def __init__(self, settings: SimSettings, ledger: Ledger, writer: Writer) -> None:
        self.settings = settings
        self.ledger = ledger
        self.writer = writer

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/user/balance", self.balance)
        r.add_get("/models", self.models)
        r.add_get("/v1/models", self.models)
        r.add_post("/chat/completions", self.chat)
        r.add_post("/v1/chat/completions", self.chat)
        r.add_post("/beta/completions", self.fim)
        r.add_post("/anthropic/v1/messages", self.anthropic)
        r.add_post("/responses", self.responses)
        r.add_post("/v1/responses", self.responses)
        for path in ("/search", "/v1/search"):
            r.add_post(path, self.search)
        for path in ("/fetch", "/v1/fetch"):
            r.add_post(path, self.fetch)

    async def balance(self, request: web.Request) -> web.StreamResponse:
        name = self._authenticate(request)
        account = self.ledger.account(name)
        infos = []
        for currency, (granted, topped_up) in account.balances.items():
            # Rounded parts, and a total that is their sum, so total = granted + topped_up holds
            # in what the client sees.
            g = granted.quantize(_CENT, ROUND_HALF_UP)
            t = topped_up.quantize(_CENT, ROUND_HALF_UP)
            amounts = (g + t, g, t)
            shown: tuple[Any, ...] = (
                tuple(float(a) for a in amounts)
                if self.settings.numeric_balances
                else tuple(str(a) for a in amounts)
            )
            infos.append(
                {
                    "currency": currency,
                    "total_balance": shown[0],
                    "granted_balance": shown[1],
                    "topped_up_balance": shown[2],
                }
            )
        return await self.writer.send_json(
            request, {"is_available": account.is_available, "balance_infos": infos}
        )

    async def models(self, request: web.Request) -> web.StreamResponse:
        self._authenticate(request)
        data = [
            {"id": m, "object": "model", "owned_by": "deepseek"}
            for m in self.settings.served_models()
        ]
        return await self.writer.send_json(request, {"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[RECORD]
        name = self._authenticate(request)
        body = await _read_json(request)
        messages = _check_messages(body)
        stream, max_tokens = _check_common(body, record)
        canonical = self._check_model(body, record)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        thinking = self._thinks(record.model or "", canonical, body)
        units = [
            (json.dumps(m, sort_keys=True, default=str), len(text_of(m.get("content"))))
            for m in messages
        ]
        s = self.settings
        return await self._reply(
            request,
            name,
            stream,
            lambda: self._infer(record, canonical, units, thinking, max_tokens),
            chat_object,
            lambda gen, omit: chat_events(
                gen, include_usage, omit, s.stream_chunks, s.stream_usage
            ),
        )

    async def fim(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[RECORD]
        name = self._authenticate(request)
        body = await _read_json(request)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise invalid(
                "missing field `prompt`" if prompt is None else "prompt: expected a string"
            )
        suffix = body.get("suffix")
        if suffix is not None and not isinstance(suffix, str):
            raise invalid("suffix: expected a string")
        stream, max_tokens = _check_common(body, record)
        canonical = self._check_model(body, record)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        units = [(prompt, len(prompt)), ("\0suffix\0" + (suffix or ""), len(suffix or ""))]
        s = self.settings
        return await self._reply(
            request,
            name,
            stream,
            lambda: self._infer(record, canonical, units, False, max_tokens),
            fim_object,
            lambda gen, omit: fim_events(gen, include_usage, omit, s.stream_chunks, s.stream_usage),
        )

    async def anthropic(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[RECORD]
        name = self._authenticate(request, anthropic=True)
        body = await _read_json(request)
        messages = _check_messages(body)
        stream, max_tokens = _check_common(body, record)
        canonical = self._check_model(body, record)
        thinking = self._thinks(record.model or "", canonical, body)
        system = body.get("system")
        units = [] if system is None else [(json.dumps(system), len(text_of(system)))]
        units += [
            (json.dumps(m, sort_keys=True, default=str), len(text_of(m.get("content"))))
            for m in messages
        ]
        tools = _server_tools(body, _ANTHROPIC_TOOLS)
        return await self._reply(
            request,
            name,
            stream,
            lambda: self._infer(record, canonical, units, thinking, max_tokens, tools),
            anthropic_message,
            lambda gen, omit: anthropic_events(gen, omit, self.settings.stream_chunks),
        )

    async def responses(self, request: web.Request) -> web.StreamResponse:
        record: RequestRecord = request[RECORD]
        name = self._authenticate(request)
        body = await _read_json(request)
        units = _responses_input(body)
        stream, _ = _check_common(body, record)
        max_tokens = body.get("max_output_tokens")
        if max_tokens is not None and (
            not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
        ):
            raise invalid("max_output_tokens: expected a positive integer")
        canonical = self._check_model(body, record)
        reasoning = body.get("reasoning")
        thinking = self._thinks(record.model or "", canonical, body) or (
            isinstance(reasoning, dict) and reasoning.get("effort") not in (None, "none")
        )
        tools = _server_tools(body, _RESPONSES_TOOLS)
        return await self._reply(
            request,
            name,
            stream,
            lambda: self._infer(record, canonical, units, thinking, max_tokens, tools),
            responses_object,
            lambda gen, omit: responses_events(gen, omit, self.settings.stream_chunks),
        )

    async def _reply(
        self,
        request: web.Request,
        name: str,
        stream: bool,
        infer: Callable[[], Generation],
        whole: Callable[[Generation, bool], dict[str, Any]],
        events: Callable[[Generation, bool], list[Event]],
    ) -> web.StreamResponse:
        """Within the account's concurrency limit: wait the inference delay, run ``infer``,
        and send the result as one object or as events (either told whether to omit usage)."""
        with self.ledger.admit(name):
            response = await self.writer.wait_for_inference(request, stream)
            gen = infer()
            omit_usage = no_usage(request)
            if not stream:
                return await self.writer.send_json(request, whole(gen, omit_usage), response)
            return await self.writer.send_events(request, events(gen, omit_usage), response)

    async def search(self, request: web.Request) -> web.StreamResponse:
        query = await self._per_request_call(request, "query", "web-search")
        results = [
            {"title": f"Result {i} for {query[:40]}", "url": f"https://example.com/{i}"}
            for i in range(1, 4)
        ]
        return await self.writer.send_json(request, {"object": "search", "results": results})

    async def fetch(self, request: web.Request) -> web.StreamResponse:
        url = await self._per_request_call(request, "url", "web-fetch")
        page = {"object": "fetch", "url": url, "content": "Simulated page text."}
        return await self.writer.send_json(request, page)

    async def _per_request_call(self, request: web.Request, field: str, item: str) -> str:
        """Validate and charge a direct call billed per request; its string ``field``."""
        record: RequestRecord = request[RECORD]
        name = self._authenticate(request)
        body = await _read_json(request)
        value = body.get(field)
        if not isinstance(value, str) or not value:
            raise invalid(
                f"missing field `{field}`" if value is None else f"{field}: expected text"
            )
        record.model = item
        with self.ledger.admit(name):
            self.ledger.charge_request(record, item, self.settings.clock())
        return value

    def _authenticate(self, request: web.Request, anthropic: bool = False) -> str:
        """The account name for the request's key, or a 401 that shows at most 4 of its chars."""
        key = presented_key(request, anthropic)
        name = self.ledger.account_for(key)
        if name is None:
            raise Reject(
                error_response(
                    401, f"Authentication Fails, Your api key: {mask_key(key)} is invalid"
                )
            )
        request[RECORD].account = name
        return name

    def _check_model(self, body: dict[str, Any], record: RequestRecord) -> str:
        """The canonical (billing) name of the requested model, or 400 Model Not Exist."""
        model = body.get("model")
        if not isinstance(model, str):
            raise invalid("missing field `model`")
        record.model = model
        canonical = self.settings.prices.canonical_model(model)
        if canonical is None or not self.settings.serves(model, canonical):
            raise Reject(error_response(400, "Model Not Exist", "invalid_request_error"))
        return canonical

    def _thinks(self, model: str, canonical: str, body: dict[str, Any]) -> bool:
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
            return thinking["type"] == "enabled"
        if body.get("reasoning_effort") not in (None, "none"):
            return True
        thinking_models = self.settings.thinking_models
        return model in thinking_models or canonical in thinking_models

    def _infer(
        self,
        record: RequestRecord,
        canonical: str,
        units: list[tuple[str, int]],
        thinking: bool,
        max_tokens: int | None,
        tool_calls: tuple[str, ...] = (),
    ) -> Generation:
        """Run the "inference": count tokens, charge the account (for the server-side tool
        calls too), record a 200."""
        content_tokens = self.settings.completion_tokens
        finish_reason = "stop"
        if max_tokens is not None and max_tokens < content_tokens:
            content_tokens, finish_reason = max_tokens, "length"
        reasoning_tokens = self.settings.reasoning_tokens if thinking else 0
        now = self.settings.clock()
        usage = self.ledger.charge(
            record,
            canonical,
            units,
            content_tokens + reasoning_tokens,
            reasoning_tokens,
            now,
            tool_calls,
        )
        return generate(
            record.seq,
            now,
            record.model or canonical,
            thinking,
            content_tokens,
            reasoning_tokens,
            finish_reason,
            usage,
            tool_calls,
            self.settings.report_tool_calls,
        )


async def _read_json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        # 400 since 2025 (it was 422 in 2024), see the sheet.
        raise Reject(
            error_response(400, f"Failed to parse the request body as JSON: {exc}")
        ) from None
    if not isinstance(body, dict):
        raise invalid("expected a JSON object")
    return body


def _check_common(body: dict[str, Any], record: RequestRecord) -> tuple[bool, int | None]:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream: invalid type, expected a boolean")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise invalid("max_tokens: expected a positive integer")
    record.stream = bool(stream)
    return bool(stream), max_tokens


def _check_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise invalid("missing field `messages`")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages: expected a non-empty list")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise invalid("messages: each message needs a string `role`")
    return messages


# Request tool types that the server runs itself, one call per request: Responses API names,
# and Anthropic's versioned ones by prefix.
_RESPONSES_TOOLS = {
    "web_search": "web_search",
    "web_search_preview": "web_search",
    "web_fetch": "web_fetch",
}
_ANTHROPIC_TOOLS = {"web_search_": "web_search", "web_fetch_": "web_fetch"}


def _server_tools(body: dict[str, Any], known: dict[str, str]) -> tuple[str, ...]:
    """The server-side tools the request enables, in order; other tools are the client's."""
    tools = body.get("tools")
    if tools is None:
        return ()
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise invalid("tools: expected a list of objects")
    found: list[str] = []
    for tool in tools:
        kind = tool.get("type")
        if not isinstance(kind, str):
            continue
        for prefix, name in known.items():
            if kind == prefix or (prefix.endswith("_") and kind.startswith(prefix)):
                found.append(name)
                break
    return tuple(found)


def _responses_input(body: dict[str, Any]) -> list[tuple[str, int]]:
    """The prompt units of a Responses request: ``instructions``, then ``input`` (a string or
    a list of message items)."""
    units: list[tuple[str, int]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid("instructions: expected a string")
        units.append(("\0instructions\0" + instructions, len(instructions)))
    given = body.get("input")
    if isinstance(given, str) and given:
        units.append((given, len(given)))
    elif isinstance(given, list) and given and all(isinstance(i, dict) for i in given):
        units += [
            (json.dumps(i, sort_keys=True, default=str), len(text_of(i.get("content"))))
            for i in given
        ]
    else:
        raise invalid("missing field `input`" if given is None else "input: expected text or items")
    return units
