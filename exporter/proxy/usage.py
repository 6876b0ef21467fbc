"""Usage as DeepSeek bills it, extracted from OpenAI chat, Responses API and Anthropic replies:
tokens by type, and the server-side tool calls (web search, fetch) a reply reports."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    """Billable tokens of one request.

    ``input_cache_hit + input_cache_miss`` is the prompt; ``reasoning`` is a part of ``output``
    (billed at the output price), reported separately for visibility.
    """

    input_cache_hit: int = 0
    input_cache_miss: int = 0
    output: int = 0
    reasoning: int = 0
    # Server-side tool calls the reply reports, as (tool, count) pairs in a stable order:
    # ("web_search", 2). Billed per call, not per token.
    tool_calls: tuple[tuple[str, int], ...] = ()


# Parsers below never raise on bad input and never invent a count: a reply they cannot read
# yields None ("usage unknown"), which the caller reports as such instead of billing zero.

_SSE_MAX_LINE = 1 << 20  # a longer SSE line is dropped: a broken upstream must not grow memory
# Only lines where "usage" holds an object are worth decoding; "usage":null is the common case
# with include_usage and must cost no JSON parse.
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')


class _Invalid(Exception):
    """A count that is present but not a non-negative int: the whole usage is unreadable."""


def _field(usage: Mapping[str, object], key: str) -> int | None:
    """The count under ``key``, None when absent or null."""
    value = usage.get(key)
    if value is None:
        return None
    # bool is an int subclass, and True is not a token count.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise _Invalid


def _details(usage: Mapping[str, object], key: str) -> Mapping[str, object]:
    value = usage.get(key)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return value
    raise _Invalid


def usage_from_openai(usage: object) -> Usage | None:
    """Usage from an OpenAI-shaped ``usage`` object as DeepSeek sends it.

    DeepSeek's own ``prompt_cache_hit/miss_tokens`` are what it bills, so they win; without them
    the OpenAI ``prompt_tokens_details.cached_tokens`` split is used, and without that the whole
    prompt counts as cache miss (nothing reported cached means nothing was billed as a hit).
    """
    if not isinstance(usage, Mapping):
        return None
    try:
        prompt = _field(usage, "prompt_tokens")
        output = _field(usage, "completion_tokens")
        hit = _field(usage, "prompt_cache_hit_tokens")
        miss = _field(usage, "prompt_cache_miss_tokens")
        cached = _field(_details(usage, "prompt_tokens_details"), "cached_tokens")
        reasoning = _field(_details(usage, "completion_tokens_details"), "reasoning_tokens")
    except _Invalid:
        return None
    if output is None:
        return None
    if hit is None or miss is None:  # derive the missing side from prompt_tokens
        if prompt is None:
            return None
        if miss is not None:
            hit = prompt - miss
        else:
            if hit is None:
                hit = cached or 0
            miss = prompt - hit
        if hit < 0 or miss < 0:
            return None
    return Usage(hit, miss, output, reasoning or 0)


def usage_from_anthropic(usage: object) -> Usage | None:
    """Usage from an Anthropic-shaped ``usage`` object.

    ``input_tokens`` excludes cached tokens there: cache reads are the hit part, and cache
    writes are billed by DeepSeek as ordinary (miss) input. ``server_tool_use`` counts the
    server-side tool calls (``web_search_requests``...).
    """
    if not isinstance(usage, Mapping):
        return None
    try:
        miss = _field(usage, "input_tokens")
        output = _field(usage, "output_tokens")
        hit = _field(usage, "cache_read_input_tokens")
        created = _field(usage, "cache_creation_input_tokens")
        server = _details(usage, "server_tool_use")
        tools = {
            key.removesuffix("_requests"): _field(server, key) or 0
            for key in server
            if isinstance(key, str) and key.endswith("_requests")
        }
    except _Invalid:
        return None
    if miss is None or output is None:
        return None
    return Usage(hit or 0, miss + (created or 0), output, 0, _tool_calls(tools))


def usage_from_responses(usage: object, output: object = None) -> Usage | None:
    """Usage from an OpenAI Responses API ``usage`` object (and the response's ``output``).

    Unlike Anthropic's, ``input_tokens`` includes the cached tokens
    (``input_tokens_details.cached_tokens``); ``output_tokens`` includes the reasoning tokens.
    Server-side tool calls are the ``output`` items of type ``<tool>_call`` (``web_search_call``)
    that did not fail.
    """
    if not isinstance(usage, Mapping):
        return None
    try:
        prompt = _field(usage, "input_tokens")
        output_tokens = _field(usage, "output_tokens")
        cached = _field(_details(usage, "input_tokens_details"), "cached_tokens") or 0
        reasoning = _field(_details(usage, "output_tokens_details"), "reasoning_tokens") or 0
    except _Invalid:
        return None
    if prompt is None or output_tokens is None or cached > prompt or reasoning > output_tokens:
        return None
    return Usage(cached, prompt - cached, output_tokens, reasoning, _output_tool_calls(output))


def _output_tool_calls(output: object) -> tuple[tuple[str, int], ...]:
    calls: dict[str, int] = {}
    if isinstance(output, list):
        for item in output:
            kind = item.get("type") if isinstance(item, Mapping) else None
            if (
                isinstance(kind, str)
                and kind.endswith("_call")
                and kind != "function_call"  # the client's own tools, not billed by DeepSeek
                and item.get("status") not in ("failed", "incomplete")
            ):
                tool = kind.removesuffix("_call")
                calls[tool] = calls.get(tool, 0) + 1
    return _tool_calls(calls)


def _tool_calls(counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    # Names as the reply spells them: the price table decides which are billed, and a name it
    # does not know is never a metric label.
    return tuple(sorted((tool, n) for tool, n in counts.items() if n > 0 and len(tool) <= 64))


def _is_responses(usage: Mapping[str, object]) -> bool:
    return "input_tokens_details" in usage or "output_tokens_details" in usage


def _usage_of(usage: object, output: object = None) -> Usage | None:
    """Any of the three shapes, told apart by their keys. Anthropic and the Responses API share
    ``input_tokens``/``output_tokens`` but not their cache fields, and only one of them counts
    cached tokens inside ``input_tokens``; without cache fields both read the same."""
    if isinstance(usage, Mapping) and ("input_tokens" in usage or "output_tokens" in usage):
        if _is_responses(usage):
            return usage_from_responses(usage, output)
        return usage_from_anthropic(usage)
    return usage_from_openai(usage)


def _usage_in(doc: Mapping[str, object]) -> Usage | None:
    """The usage of a reply object: at the top level, or under ``response`` as the Responses
    API streams it (``response.completed``); accept both nestings either way."""
    usage, output = doc.get("usage"), doc.get("output")
    nested = doc.get("response")
    if usage is None and isinstance(nested, Mapping):
        usage, output = nested.get("usage"), nested.get("output")
    return _usage_of(usage, output)


def _loads(data: bytes) -> object:
    # Decoding as UTF-8 ourselves: json.loads(bytes) would guess UTF-16/32 from garbage.
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def usage_from_json_body(body: bytes) -> Usage | None:
    """Usage from a whole non-streaming response body, OpenAI- or Anthropic-shaped.

    The server may send blank keep-alive lines before the JSON; JSON allows leading white space,
    so they need no special handling.
    """
    doc = _loads(body)
    return _usage_in(doc) if isinstance(doc, dict) else None


class StreamUsageScanner:
    """Fed the raw bytes of an SSE response in arbitrary chunk boundaries; finds usage without
    parsing every event.

    Lines are cut on ``\\n`` (a trailing ``\\r`` is dropped), and only ``data:`` lines in which
    ``"usage"`` holds an object are JSON-decoded. OpenAI style: the last non-null usage wins.
    Anthropic style: ``message_start`` gives the input side, ``message_delta`` the cumulative
    output (and any input fields it repeats); they are combined at ``finish()``.
    """

    __slots__ = ("_anthropic", "_buffer", "_openai", "_skipping")

    def __init__(self) -> None:
        self._buffer = bytearray()  # the unfinished last line
        self._skipping = False  # inside a line already over the limit: drop it up to its end
        self._openai: Usage | None = None
        self._anthropic: dict[str, object] | None = None

    def feed(self, chunk: bytes) -> None:
        if (
            not self._buffer
            and not self._skipping
            and chunk.endswith(b"\n")
            and (b'"usage"' not in chunk or not _USAGE_OBJECT.search(chunk))
        ):
            return  # whole lines, none with a usage object: the common chunk, at C speed
        lines = chunk.split(b"\n")
        if len(lines) > 1:
            first = lines[0]
            if self._skipping:
                self._skipping = False
            elif self._buffer:
                self._buffer += first
                self._line(bytes(self._buffer))
            else:
                self._line(first)
            self._buffer.clear()
            for line in lines[1:-1]:
                self._line(line)
        rest = lines[-1]
        if self._skipping:
            return
        if len(self._buffer) + len(rest) > _SSE_MAX_LINE:
            self._buffer.clear()
            self._skipping = True
        else:
            self._buffer += rest

    def finish(self) -> Usage | None:
        """The usage found, or None; a last line that lacks its line break is read too."""
        if self._buffer and not self._skipping:
            self._line(bytes(self._buffer))
        self._buffer.clear()
        if self._anthropic is not None:
            return usage_from_anthropic(self._anthropic)
        return self._openai

    def _line(self, line: bytes) -> None:
        if (
            b'"usage"' not in line
            or not line.startswith(b"data:")
            or len(line) > _SSE_MAX_LINE
            or not _USAGE_OBJECT.search(line)
        ):
            return
        event = _loads(line[5:])  # json.loads skips the space and a trailing \r
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                self._anthropic = dict(usage)
        elif kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, dict) and self._anthropic is not None:
                self._anthropic.update((k, v) for k, v in usage.items() if v is not None)
        else:
            found = _usage_in(event)
            if found is not None:
                self._openai = found
