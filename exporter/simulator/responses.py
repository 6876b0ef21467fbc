"""The OpenAI Responses API shapes (``POST /responses``), built from a :class:`Generation`.

Usage follows OpenAI's Responses format, which DeepSeek's pricing page lists as supported:
``input_tokens`` counts cached tokens too, ``input_tokens_details.cached_tokens`` the cached
part, ``output_tokens`` includes ``output_tokens_details.reasoning_tokens``. Streamed, usage
rides only in the final ``response.completed`` event, under ``response.usage``. Server-side tool
calls appear as output items (``web_search_call``, ``web_fetch_call``) when reported. Pure
functions, no I/O.
"""

from __future__ import annotations

from typing import Any

from exporter.simulator.generation import Generation, split
from exporter.simulator.records import Event


def _usage(gen: Generation) -> dict[str, Any]:
    usage = gen.usage
    prompt = usage.input_cache_hit + usage.input_cache_miss
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": usage.input_cache_hit},
        "output_tokens": usage.output,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning},
        "total_tokens": prompt + usage.output,
    }


def _reasoning_item(gen: Generation) -> dict[str, Any]:
    return {
        "type": "reasoning",
        "id": f"rs_{gen.id}",
        "summary": [{"type": "summary_text", "text": "".join(gen.reasoning)}],
    }


def _tool_items(gen: Generation) -> list[dict[str, Any]]:
    return [
        {"type": f"{tool}_call", "id": f"{tool}_{gen.id}_{i}", "status": "completed"}
        for i, tool in enumerate(gen.reported_tool_calls)
    ]


def _message_item(gen: Generation, text: str, status: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{gen.id}",
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}]
        if status == "completed" or text
        else [],
    }


def _response(
    gen: Generation, output: list[dict[str, Any]], status: str, usage: dict[str, Any] | None
) -> dict[str, Any]:
    incomplete = gen.finish_reason == "length" and status == "completed"
    return {
        "id": f"resp_{gen.id}",
        "object": "response",
        "created_at": gen.created,
        "status": "incomplete" if incomplete else status,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "error": None,
        "model": gen.model,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def responses_object(gen: Generation, no_usage: bool) -> dict[str, Any]:
    output = [_reasoning_item(gen)] if gen.thinking else []
    output += _tool_items(gen)
    output.append(_message_item(gen, "".join(gen.content), "completed"))
    return _response(gen, output, "completed", None if no_usage else _usage(gen))


def responses_events(gen: Generation, no_usage: bool, stream_chunks: int) -> list[Event]:
    """The Responses streaming events, each sent with its ``event:`` line; no ``[DONE]``."""
    events: list[Event] = []

    def emit(kind: str, **payload: Any) -> None:
        events.append((kind, {"type": kind, "sequence_number": len(events), **payload}))

    emit("response.created", response=_response(gen, [], "in_progress", None))
    emit("response.in_progress", response=_response(gen, [], "in_progress", None))
    done: list[dict[str, Any]] = []
    if gen.thinking:
        item = _reasoning_item(gen)
        emit("response.output_item.added", output_index=0, item={**item, "summary": []})
        emit("response.output_item.done", output_index=0, item=item)
        done.append(item)
    for item in _tool_items(gen):
        emit("response.output_item.added", output_index=len(done), item=item)
        emit("response.output_item.done", output_index=len(done), item=item)
        done.append(item)
    index = len(done)
    message = _message_item(gen, "", "in_progress")
    emit("response.output_item.added", output_index=index, item=message)
    part = {"type": "output_text", "text": "", "annotations": []}
    ids = {"item_id": message["id"], "output_index": index, "content_index": 0}
    emit("response.content_part.added", **ids, part=part)
    for piece in split(gen.content, max(1, stream_chunks)):
        emit("response.output_text.delta", **ids, delta=piece)
    text = "".join(gen.content)
    emit("response.output_text.done", **ids, text=text)
    emit("response.content_part.done", **ids, part={**part, "text": text})
    final_message = _message_item(gen, text, "completed")
    emit("response.output_item.done", output_index=index, item=final_message)
    done.append(final_message)
    usage = None if no_usage else _usage(gen)
    emit("response.completed", response=_response(gen, done, "completed", usage))
    return events
