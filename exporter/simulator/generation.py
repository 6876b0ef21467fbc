"""Deterministic "inference" and the replies built from it: the JSON objects and SSE event lists
of OpenAI chat completions, FIM completions and Anthropic messages. Pure functions, no I/O."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

from exporter.proxy.usage import Usage
from exporter.simulator.records import Event

# Deterministic filler text: one word is one token, so chunk sizes are easy to reason about.
_CONTENT_WORDS = ("The", "simulated", "model", "answers", "with", "deterministic", "filler", "text")
_REASONING_WORDS = ("Let", "me", "think", "about", "the", "question", "step", "by", "step")


@dataclass
class Generation:
    """One simulated inference: everything the renderers need."""

    id: str
    created: int
    model: str  # as requested
    thinking: bool
    reasoning: list[str]  # one word (token) per item, joined they make the text
    content: list[str]
    finish_reason: str
    usage: Usage
    # Server-side tool calls made, in order ("web_search", "web_fetch"), and whether the reply
    # reports them.
    tool_calls: tuple[str, ...] = ()
    report_tool_calls: bool = True

    @property
    def reported_tool_calls(self) -> tuple[str, ...]:
        return self.tool_calls if self.report_tool_calls else ()


def generate(
    seq: int,
    now: float,
    model: str,
    thinking: bool,
    content_tokens: int,
    reasoning_tokens: int,
    finish_reason: str,
    usage: Usage,
    tool_calls: tuple[str, ...] = (),
    report_tool_calls: bool = True,
) -> Generation:
    """The reply to request number ``seq``, at ``now``, of ``model`` (as requested)."""
    return Generation(
        id=f"sim-{seq}",
        created=int(now),
        model=model,
        thinking=thinking,
        reasoning=words(_REASONING_WORDS, reasoning_tokens),
        content=words(_CONTENT_WORDS, content_tokens),
        finish_reason=finish_reason,
        usage=usage,
        tool_calls=tool_calls,
        report_tool_calls=report_tool_calls,
    )


def text_of(content: Any) -> str:
    """The text of an OpenAI or Anthropic message content (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return ""


def words(vocabulary: tuple[str, ...], n: int) -> list[str]:
    return [("" if i == 0 else " ") + vocabulary[i % len(vocabulary)] for i in range(n)]


def split(items: list[str], parts: int) -> list[str]:
    """``items`` joined into exactly ``parts`` pieces of near-equal size (some may be empty)."""
    n = len(items)
    return ["".join(items[i * n // parts : (i + 1) * n // parts]) for i in range(parts)]


def _openai_usage(usage: Usage, thinking: bool) -> dict[str, Any]:
    prompt = usage.input_cache_hit + usage.input_cache_miss
    result: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": usage.output,
        "total_tokens": prompt + usage.output,
        "prompt_tokens_details": {"cached_tokens": usage.input_cache_hit},
    }
    if thinking:
        result["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning}
    result["prompt_cache_hit_tokens"] = usage.input_cache_hit
    result["prompt_cache_miss_tokens"] = usage.input_cache_miss
    return result


def _anthropic_usage(gen: Generation) -> dict[str, Any]:
    # Anthropic semantics: input_tokens excludes the tokens read from the cache.
    usage = gen.usage
    result: dict[str, Any] = {
        "input_tokens": usage.input_cache_miss,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.input_cache_hit,
        "output_tokens": usage.output,
    }
    if gen.reported_tool_calls:
        result["server_tool_use"] = _server_tool_use(gen)
    return result


def _server_tool_use(gen: Generation) -> dict[str, int]:
    """Anthropic's count of server-side tool calls: ``{"web_search_requests": 1}``."""
    return {f"{tool}_requests": n for tool, n in Counter(gen.reported_tool_calls).items()}


# ---- OpenAI chat completions -----------------------------------------------------------------


def chat_object(gen: Generation, no_usage: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(gen.content)}
    if gen.thinking:
        message["reasoning_content"] = "".join(gen.reasoning)
    obj: dict[str, Any] = {
        "id": gen.id,
        "object": "chat.completion",
        "created": gen.created,
        "model": gen.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": gen.finish_reason,
            }
        ],
        "system_fingerprint": "fp_sim",
    }
    if not no_usage:
        obj["usage"] = _openai_usage(gen.usage, gen.thinking)
    return obj


def chat_events(
    gen: Generation, include_usage: bool, no_usage: bool, stream_chunks: int, stream_usage: str
) -> list[Event]:
    style = stream_usage
    usage = None if no_usage else _openai_usage(gen.usage, gen.thinking)
    # Where usage goes: on the finishing chunk ("deepseek" always, "requested" if asked),
    # or an extra choices-less chunk ("openai", if asked).
    on_final = style == "deepseek" or (style == "requested" and include_usage)
    extra_chunk = style == "openai" and include_usage

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": gen.id,
            "object": "chat.completion.chunk",
            "created": gen.created,
            "model": gen.model,
            "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if include_usage:
            obj["usage"] = None
        return obj

    total = max(1, stream_chunks)
    if gen.thinking:
        n_reasoning = max(1, total // 2)
        pieces = [("reasoning_content", t) for t in split(gen.reasoning, n_reasoning)]
        pieces += [("content", t) for t in split(gen.content, max(1, total - n_reasoning))]
        first = chunk({"role": "assistant", "content": None, "reasoning_content": ""})
    else:
        pieces = [("content", t) for t in split(gen.content, total)]
        first = chunk({"role": "assistant", "content": ""})
    chunks = [first]
    for key, text in pieces:
        delta = {"content": None, key: text} if key == "reasoning_content" else {key: text}
        chunks.append(chunk(delta))
    final = chunk({"content": ""}, gen.finish_reason)
    if on_final and usage is not None:
        final["usage"] = usage
    chunks.append(final)
    if extra_chunk:
        tail = chunk({})
        tail["choices"] = []
        tail["usage"] = usage
        chunks.append(tail)
    events: list[Event] = [(None, c) for c in chunks]
    events.append((None, "[DONE]"))
    return events


# ---- FIM completions -------------------------------------------------------------------------


def _fim_completion(gen: Generation, text: str, finish: str | None) -> dict[str, Any]:
    return {
        "id": gen.id,
        "object": "text_completion",
        "created": gen.created,
        "model": gen.model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }


def fim_object(gen: Generation, no_usage: bool) -> dict[str, Any]:
    obj = _fim_completion(gen, "".join(gen.content), gen.finish_reason)
    if not no_usage:
        obj["usage"] = _openai_usage(gen.usage, False)
    return obj


def fim_events(
    gen: Generation, include_usage: bool, no_usage: bool, stream_chunks: int, stream_usage: str
) -> list[Event]:
    usage = None if no_usage else _openai_usage(gen.usage, False)
    chunks = [_fim_completion(gen, t, None) for t in split(gen.content, max(1, stream_chunks))]
    chunks.append(_fim_completion(gen, "", gen.finish_reason))
    if include_usage:
        for c in chunks:
            c["usage"] = None
    if usage is not None and (stream_usage == "deepseek" or include_usage):
        chunks[-1]["usage"] = usage
    events: list[Event] = [(None, c) for c in chunks]
    events.append((None, "[DONE]"))
    return events


# ---- Anthropic messages ----------------------------------------------------------------------


def _anthropic_start(gen: Generation) -> tuple[dict[str, Any], str, str]:
    """The message without content, its stop reason and its thinking signature."""
    stop_reason = "max_tokens" if gen.finish_reason == "length" else "end_turn"
    signature = hashlib.sha256(gen.id.encode()).hexdigest()[:32]
    message: dict[str, Any] = {
        "id": f"msg_{gen.id}",
        "type": "message",
        "role": "assistant",
        "model": gen.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    return message, stop_reason, signature


def anthropic_message(gen: Generation, no_usage: bool) -> dict[str, Any]:
    message, stop_reason, signature = _anthropic_start(gen)
    if gen.thinking:
        message["content"].append(
            {
                "type": "thinking",
                "thinking": "".join(gen.reasoning),
                "signature": signature,
            }
        )
    message["content"].append({"type": "text", "text": "".join(gen.content)})
    message["stop_reason"] = stop_reason
    if not no_usage:
        message["usage"] = _anthropic_usage(gen)
    return message


def anthropic_events(gen: Generation, no_usage: bool, stream_chunks: int) -> list[Event]:
    message, stop_reason, signature = _anthropic_start(gen)
    events: list[Event] = []

    def emit(kind: str, **payload: Any) -> None:
        events.append((kind, {"type": kind, **payload}))

    if not no_usage:
        start_usage = _anthropic_usage(gen)
        start_usage.pop("server_tool_use", None)  # reported at the end, in message_delta
        message["usage"] = {**start_usage, "output_tokens": 1}
    emit("message_start", message=message)
    total = max(1, stream_chunks)
    blocks: list[tuple[str, str, list[str]]] = []
    if gen.thinking:
        n_reasoning = max(1, total // 2)
        blocks.append(("thinking", "thinking", split(gen.reasoning, n_reasoning)))
        total = max(1, total - n_reasoning)
    blocks.append(("text", "text", split(gen.content, total)))
    for index, (block_type, key, pieces) in enumerate(blocks):
        start: dict[str, Any] = {"type": block_type, key: ""}
        if block_type == "thinking":
            start["signature"] = ""
        emit("content_block_start", index=index, content_block=start)
        for piece in pieces:
            emit(
                "content_block_delta",
                index=index,
                delta={"type": f"{block_type}_delta", key: piece},
            )
        if block_type == "thinking":
            emit(
                "content_block_delta",
                index=index,
                delta={"type": "signature_delta", "signature": signature},
            )
        emit("content_block_stop", index=index)
    delta_payload: dict[str, Any] = {"delta": {"stop_reason": stop_reason, "stop_sequence": None}}
    if not no_usage:
        delta_payload["usage"] = {"output_tokens": gen.usage.output}
        if gen.reported_tool_calls:
            delta_payload["usage"]["server_tool_use"] = _server_tool_use(gen)
    emit("message_delta", **delta_payload)
    emit("message_stop")
    return events
