"""The API endpoints: balance, models, chat completions, FIM and Anthropic messages, with the
request validation they share."""

from __future__ import annotations

import json
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
from exporter.simulator.records import RECORD, RequestRecord
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
        with self.ledger.admit(name):
            response = await self.writer.wait_for_inference(request, stream)
            gen = self._infer(record, canonical, units, thinking, max_tokens)
            if not stream:
                obj = chat_object(gen, no_usage(request))
                return await self.writer.send_json(request, obj, response)
            s = self.settings
            events = chat_events(
                gen, include_usage, no_usage(request), s.stream_chunks, s.stream_usage
            )
            return await self.writer.send_events(request, events, response)

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
        with self.ledger.admit(name):
            response = await self.writer.wait_for_inference(request, stream)
            gen = self._infer(record, canonical, units, False, max_tokens)
            if not stream:
                obj = fim_object(gen, no_usage(request))
                return await self.writer.send_json(request, obj, response)
            s = self.settings
            events = fim_events(
                gen, include_usage, no_usage(request), s.stream_chunks, s.stream_usage
            )
            return await self.writer.send_events(request, events, response)

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
        with self.ledger.admit(name):
            response = await self.writer.wait_for_inference(request, stream)
            gen = self._infer(record, canonical, units, thinking, max_tokens)
            if not stream:
                message = anthropic_message(gen, no_usage(request))
                return await self.writer.send_json(request, message, response)
            events = anthropic_events(gen, no_usage(request), self.settings.stream_chunks)
            return await self.writer.send_events(request, events, response)

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
    ) -> Generation:
        """Run the "inference": count tokens, charge the account, record a 200."""
        content_tokens = self.settings.completion_tokens
        finish_reason = "stop"
        if max_tokens is not None and max_tokens < content_tokens:
            content_tokens, finish_reason = max_tokens, "length"
        reasoning_tokens = self.settings.reasoning_tokens if thinking else 0
        now = self.settings.clock()
        usage = self.ledger.charge(
            record, canonical, units, content_tokens + reasoning_tokens, reasoning_tokens, now
        )
        model = record.model or canonical
        return generate(
            record.seq, now, model, thinking, content_tokens, reasoning_tokens, finish_reason, usage
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
