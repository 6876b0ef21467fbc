"""Usage parsing: every variant the API sheet lists, SSE at any chunk boundary, and garbage."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import exporter.proxy.usage as usage_module
from exporter.proxy.usage import (
    StreamUsageScanner,
    Usage,
    usage_from_anthropic,
    usage_from_json_body,
    usage_from_openai,
)

SHEET_USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 11,
    "total_tokens": 21,
    "prompt_cache_hit_tokens": 0,
    "prompt_cache_miss_tokens": 10,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 81},
}

# --- usage_from_openai -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # the sheet's example as given (81 reasoning > 11 completion): kept, never "fixed"
        (SHEET_USAGE, Usage(0, 10, 11, 81)),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 11,
                "total_tokens": 21,
                "prompt_cache_hit_tokens": 0,
                "prompt_cache_miss_tokens": 10,
            },
            Usage(0, 10, 11, 0),
        ),
        (
            {
                "prompt_tokens": 1000,
                "completion_tokens": 300,
                "prompt_cache_hit_tokens": 640,
                "prompt_cache_miss_tokens": 360,
                "prompt_tokens_details": {"cached_tokens": 640},
                "completion_tokens_details": {"reasoning_tokens": 200},
            },
            Usage(640, 360, 300, 200),
        ),
        # OpenAI-style details only
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 11,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
            Usage(4, 6, 11, 0),
        ),
        # neither: the whole prompt is cache miss
        ({"prompt_tokens": 10, "completion_tokens": 11, "total_tokens": 21}, Usage(0, 10, 11, 0)),
        ({"prompt_tokens": 0, "completion_tokens": 0}, Usage(0, 0, 0, 0)),
        # explicit nulls read as absent
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 11,
                "prompt_cache_hit_tokens": None,
                "prompt_tokens_details": None,
                "completion_tokens_details": None,
            },
            Usage(0, 10, 11, 0),
        ),
        (
            {
                "prompt_tokens": 10,
                "completion_tokens": 11,
                "prompt_tokens_details": {"cached_tokens": None},
                "completion_tokens_details": {"reasoning_tokens": None},
            },
            Usage(0, 10, 11, 0),
        ),
        # one of hit / miss: the other from prompt_tokens
        (
            {"prompt_tokens": 10, "completion_tokens": 1, "prompt_cache_hit_tokens": 3},
            Usage(3, 7, 1, 0),
        ),
        (
            {"prompt_tokens": 10, "completion_tokens": 1, "prompt_cache_miss_tokens": 3},
            Usage(7, 3, 1, 0),
        ),
        # hit / miss are what DeepSeek bills: they win over a disagreeing prompt_tokens
        (
            {
                "prompt_tokens": 99,
                "completion_tokens": 1,
                "prompt_cache_hit_tokens": 2,
                "prompt_cache_miss_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 50},
            },
            Usage(2, 3, 1, 0),
        ),
        # hit / miss without prompt_tokens
        (
            {"completion_tokens": 1, "prompt_cache_hit_tokens": 2, "prompt_cache_miss_tokens": 3},
            Usage(2, 3, 1, 0),
        ),
        (
            {"prompt_tokens": 10**15, "completion_tokens": 10**12},
            Usage(0, 10**15, 10**12, 0),
        ),
        # unknown extra fields are ignored
        ({"prompt_tokens": 1, "completion_tokens": 2, "new_field": "x"}, Usage(0, 1, 2, 0)),
    ],
)
def test_openai_usage(usage: dict[str, Any], expected: Usage) -> None:
    assert usage_from_openai(usage) == expected


@pytest.mark.parametrize(
    "usage",
    [
        None,
        [],
        "usage",
        42,
        {},
        {"prompt_tokens": 10},  # no completion_tokens
        {"completion_tokens": 10},  # no prompt at all
        {"completion_tokens": 1, "prompt_cache_hit_tokens": 2},  # cannot derive miss
        {"prompt_tokens": -1, "completion_tokens": 1},
        {"prompt_tokens": 1, "completion_tokens": -1},
        {"prompt_tokens": 1.0, "completion_tokens": 1},
        {"prompt_tokens": 1, "completion_tokens": "1"},
        {"prompt_tokens": True, "completion_tokens": 1},
        {"prompt_tokens": 1, "completion_tokens": False},
        {"prompt_tokens": 1, "completion_tokens": 1, "prompt_cache_hit_tokens": -1},
        {"prompt_tokens": 1, "completion_tokens": 1, "prompt_cache_miss_tokens": True},
        {"prompt_tokens": 1, "completion_tokens": 1, "prompt_tokens_details": []},
        {"prompt_tokens": 1, "completion_tokens": 1, "completion_tokens_details": 5},
        {
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "prompt_tokens_details": {"cached_tokens": "0"},
        },
        {
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "completion_tokens_details": {"reasoning_tokens": -3},
        },
        {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 6}},
        {"prompt_tokens": 5, "completion_tokens": 1, "prompt_cache_hit_tokens": 6},
        {"prompt_tokens": 5, "completion_tokens": 1, "prompt_cache_miss_tokens": 6},
    ],
)
def test_openai_usage_unreadable(usage: object) -> None:
    assert usage_from_openai(usage) is None


# --- usage_from_anthropic --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {
                "input_tokens": 100,
                "output_tokens": 50,
                "cache_read_input_tokens": 30,
                "cache_creation_input_tokens": 20,
            },
            Usage(30, 120, 50, 0),
        ),
        ({"input_tokens": 100, "output_tokens": 50}, Usage(0, 100, 50, 0)),
        (
            {
                "input_tokens": 7,
                "output_tokens": 0,
                "cache_read_input_tokens": None,
                "cache_creation_input_tokens": None,
            },
            Usage(0, 7, 0, 0),
        ),
        (
            {"input_tokens": 0, "output_tokens": 5, "cache_read_input_tokens": 64},
            Usage(64, 0, 5, 0),
        ),
    ],
)
def test_anthropic_usage(usage: dict[str, Any], expected: Usage) -> None:
    assert usage_from_anthropic(usage) == expected


@pytest.mark.parametrize(
    "usage",
    [
        None,
        [1, 2],
        {"input_tokens": 1},
        {"output_tokens": 1},
        {"input_tokens": -1, "output_tokens": 1},
        {"input_tokens": 1, "output_tokens": 1.5},
        {"input_tokens": True, "output_tokens": 1},
        {"input_tokens": 1, "output_tokens": 1, "cache_read_input_tokens": "3"},
        {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": -2},
    ],
)
def test_anthropic_usage_unreadable(usage: object) -> None:
    assert usage_from_anthropic(usage) is None


# --- usage_from_json_body --------------------------------------------------------------------

OPENAI_BODY = {
    "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
    "object": "chat.completion",
    "created": 1705651092,
    "model": "deepseek-flash",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "你好", "reasoning_content": "嗯"},
            "finish_reason": "stop",
        }
    ],
    "usage": SHEET_USAGE,
}
ANTHROPIC_BODY = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "deepseek-flash",
    "content": [{"type": "text", "text": "你好"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 25, "output_tokens": 9, "cache_read_input_tokens": 100},
}
FIM_BODY = {
    "id": "c1",
    "object": "text_completion",
    "choices": [{"text": "return x", "index": 0, "finish_reason": "stop"}],
    "usage": {
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "prompt_cache_hit_tokens": 0,
        "prompt_cache_miss_tokens": 12,
    },
}


@pytest.mark.parametrize("prefix", [b"", b"\n", b"\n\n\n\n", b"\r\n\r\n", b" \t\n  \n"])
def test_json_body(prefix: bytes) -> None:
    body = prefix + json.dumps(OPENAI_BODY, ensure_ascii=False).encode()
    assert usage_from_json_body(body) == Usage(0, 10, 11, 81)
    body = prefix + json.dumps(ANTHROPIC_BODY, ensure_ascii=False).encode()
    assert usage_from_json_body(body) == Usage(100, 25, 9, 0)
    assert usage_from_json_body(prefix + json.dumps(FIM_BODY).encode()) == Usage(0, 12, 3, 0)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\n\n\n",
        b"null",
        b"[]",
        b'"usage"',
        b"{",
        json.dumps(OPENAI_BODY).encode()[:-20],  # cut short
        b'{"error": {"message": "Insufficient Balance", "type": "unknown_error", '
        b'"param": null, "code": "invalid_request_error"}}',
        b'{"usage": null}',
        b'{"usage": {}}',
        b'{"usage": [1, 2]}',
        b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1e3}}',
        b'{"usage": {"prompt_tokens": NaN, "completion_tokens": 1}}',
        b'{"usage": {"input_tokens": 1, "output_tokens": "2"}}',
        b"\xff\xfe{\x00}\x00",  # not UTF-8
        b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}, "x": "\xc3"}',  # bad UTF-8
        b"[" * 100_000,  # nesting deep enough to hit the recursion limit
        b'{"usage": {"prompt_tokens": ' + b"9" * 5000 + b', "completion_tokens": 1}}',
        b"data: " + json.dumps(OPENAI_BODY).encode(),  # an SSE line is not a JSON body
    ],
)
def test_json_body_unreadable(body: bytes) -> None:
    assert usage_from_json_body(body) is None


# --- StreamUsageScanner ----------------------------------------------------------------------


def _chunk(
    delta: dict[str, Any],
    finish: str | None = None,
    usage: object = None,
    *,
    choices: bool = True,
    compact: bool = False,
) -> bytes:
    body: dict[str, Any] = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "deepseek-flash",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
        "usage": usage,
    }
    separators = (",", ":") if compact else None
    return b"data: " + json.dumps(body, ensure_ascii=False, separators=separators).encode()


FINAL_USAGE = {
    "prompt_tokens": 10,
    "completion_tokens": 11,
    "total_tokens": 21,
    "prompt_cache_hit_tokens": 4,
    "prompt_cache_miss_tokens": 6,
    "completion_tokens_details": {"reasoning_tokens": 5},
}
FINAL = Usage(4, 6, 11, 5)


def _sse(*lines: bytes, eol: bytes = b"\n") -> bytes:
    """Events separated by blank lines, as the server sends them."""
    return b"".join(line + eol + eol for line in lines)


# include_usage: every chunk has "usage": null, the last one before [DONE] carries it
OPENAI_STREAM = [
    b": keep-alive",
    b": keep-alive",
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"reasoning_content": "让我想想…"}, compact=True),
    _chunk({"content": "你好"}),
    _chunk({"content": "🙂"}, compact=True),
    _chunk({}, "stop", FINAL_USAGE),
    b"data: [DONE]",
]
ANTHROPIC_STREAM = [
    b"event: message_start\ndata: "
    + json.dumps(
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "deepseek-flash",
                "stop_reason": None,
                "usage": {
                    "input_tokens": 25,
                    "output_tokens": 1,
                    "cache_read_input_tokens": 100,
                    "cache_creation_input_tokens": 0,
                },
            },
        }
    ).encode(),
    b'event: ping\ndata: {"type": "ping"}',
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}',
    b"event: content_block_delta\ndata: "
    + json.dumps(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": "你好"},
        },
        ensure_ascii=False,
    ).encode(),
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":null},'
    b'"usage":{"output_tokens":5}}',
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":15}}',
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}',
    b'event: message_stop\ndata: {"type":"message_stop"}',
]
ANTHROPIC_FINAL = Usage(100, 25, 15, 0)


def scan(*chunks: bytes) -> Usage | None:
    scanner = StreamUsageScanner()
    for chunk in chunks:
        scanner.feed(chunk)
    return scanner.finish()


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
@pytest.mark.parametrize(
    ("lines", "expected"), [(OPENAI_STREAM, FINAL), (ANTHROPIC_STREAM, ANTHROPIC_FINAL)]
)
def test_stream_split_at_every_byte(lines: list[bytes], expected: Usage, eol: bytes) -> None:
    stream = _sse(*(line.replace(b"\n", eol) for line in lines), eol=eol)
    assert "你好".encode() in stream  # so some split points fall inside a UTF-8 sequence
    assert scan(stream) == expected
    for i in range(len(stream) + 1):
        assert scan(stream[:i], stream[i:]) == expected, f"split at byte {i}"
    assert scan(*(stream[i : i + 1] for i in range(len(stream)))) == expected
    assert scan(*(stream[i : i + 7] for i in range(0, len(stream), 7))) == expected


def test_stream_usage_without_include_usage() -> None:
    """Some integrators saw usage only on the last chunk, with no null usage before it."""
    stream = _sse(
        b'data: {"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}',
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1}}',
        b"data: [DONE]",
    )
    assert scan(stream) == Usage(0, 3, 1, 0)


def test_stream_openai_extra_usage_chunk() -> None:
    """OpenAI sends usage in an extra chunk with "choices": [] after the finish_reason chunk."""
    stream = _sse(
        _chunk({"content": "hi"}),
        _chunk({}, "stop"),
        _chunk({}, usage=FINAL_USAGE, choices=False),
        b"data: [DONE]",
    )
    assert scan(stream) == FINAL


def test_stream_last_non_null_usage_wins() -> None:
    later = dict(FINAL_USAGE, completion_tokens=20)
    stream = _sse(_chunk({}, usage=FINAL_USAGE), _chunk({}, usage=None), _chunk({}, "stop", later))
    assert scan(stream) == Usage(4, 6, 20, 5)


def test_stream_unreadable_usage_keeps_the_last_good_one() -> None:
    bad = dict(FINAL_USAGE, completion_tokens=-1)
    stream = _sse(_chunk({}, usage=FINAL_USAGE), _chunk({}, "stop", bad), b'data: {"usage": {')
    assert scan(stream) == FINAL


@pytest.mark.parametrize(
    "stream",
    [
        b"",
        _sse(b": keep-alive", b": keep-alive"),
        _sse(_chunk({"content": "x"}), _chunk({}, "stop"), b"data: [DONE]"),  # usage all null
        _sse(b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 1'),  # cut short
        _sse(b'data: {"usage": {"prompt_tokens": "1", "completion_tokens": 1}}'),
        _sse(b'data: ["usage", {"prompt_tokens": 1}]'),
        _sse(b'event: usage\ndata: "usage": {"prompt_tokens": 1, "completion_tokens": 1}'),
        _sse(b'"usage": {"prompt_tokens": 1, "completion_tokens": 1}'),  # not a data line
        _sse(b': "usage": {"prompt_tokens": 1, "completion_tokens": 1}'),  # a comment
        _sse(b'data: {"content": "the \\"usage\\": {\\"prompt_tokens\\": 1}"}'),
        # Anthropic: output without the message_start input side is not a usage
        _sse(b'data: {"type":"message_delta","usage":{"output_tokens":15}}'),
        b"\xff\xfe\x00garbage\n\n\x00\x01data: \xc3\x28\r\n",
    ],
)
def test_stream_without_usage(stream: bytes) -> None:
    assert scan(stream) is None


def test_stream_last_line_without_line_break() -> None:
    stream = _sse(_chunk({"content": "x"})) + _chunk({}, "stop", FINAL_USAGE)
    assert scan(stream) == FINAL


def test_stream_data_without_space() -> None:
    assert scan(b'data:{"usage":{"prompt_tokens":2,"completion_tokens":1}}\n\n') == Usage(0, 2, 1)


def test_stream_null_usage_is_never_json_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []

    def loads(text: str) -> object:
        decoded.append(text)
        return json.loads(text)

    monkeypatch.setattr(usage_module, "json", SimpleNamespace(loads=loads))
    stream = _sse(
        *(_chunk({"content": "x"}, compact=i % 2 == 0) for i in range(100)),
        _chunk({}, "stop", FINAL_USAGE),
        b"data: [DONE]",
    )
    assert scan(stream) == FINAL
    assert len(decoded) == 1


def test_stream_line_over_the_limit_is_dropped_and_memory_stays_bounded() -> None:
    usage = json.dumps({"prompt_tokens": 1, "completion_tokens": 1}).encode()
    huge = b'data: {"usage": ' + usage + b', "pad": "' + b"x" * (2 << 20) + b'"}'
    after = _chunk({}, "stop", FINAL_USAGE)

    assert scan(huge + b"\n\n") is None  # in one chunk
    assert scan(huge) is None  # as the unterminated last line
    scanner = StreamUsageScanner()
    for i in range(0, len(huge), 64 << 10):  # in pieces, as a socket would deliver it
        scanner.feed(huge[i : i + (64 << 10)])
        assert len(scanner._buffer) <= 1 << 20
    scanner.feed(b"\n\n" + after + b"\n\n")
    assert scanner.finish() == FINAL  # scanning resumes after the dropped line


# --- fuzz ------------------------------------------------------------------------------------

# Fragments that steer random input into the interesting paths (usage objects, partial lines).
FRAGMENTS = st.sampled_from(
    [
        b"data: ",
        b"data:",
        b"\n",
        b"\r\n",
        b": keep-alive\n\n",
        b'{"usage": {',
        b'"usage":{',
        b'"usage":null',
        b'"prompt_tokens": 5, ',
        b'"completion_tokens": -1',
        b'"completion_tokens": 3}}',
        b'"type":"message_start","message":{"usage":{"input_tokens":1,"output_tokens":2}}}',
        b'{"type":"message_delta","usage":{"output_tokens":7,"input_tokens":true}}',
        b"[DONE]",
        "你好".encode(),
        b"\xff",
    ]
)
STREAM_BYTES = st.lists(st.one_of(st.binary(max_size=40), FRAGMENTS), max_size=40).map(b"".join)


@given(STREAM_BYTES, st.lists(st.integers(min_value=0, max_value=2000), max_size=8))
def test_fuzz_scanner_never_raises_and_ignores_chunking(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    result = scan(*pieces)
    assert result is None or isinstance(result, Usage)
    assert result == scan(data)


@given(st.one_of(st.binary(max_size=200), STREAM_BYTES))
def test_fuzz_json_body_never_raises(body: bytes) -> None:
    result = usage_from_json_body(body)
    assert result is None or isinstance(result, Usage)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "prompt_tokens",
                    "completion_tokens",
                    "prompt_cache_hit_tokens",
                    "prompt_cache_miss_tokens",
                    "prompt_tokens_details",
                    "cached_tokens",
                    "completion_tokens_details",
                    "reasoning_tokens",
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                ]
            )
            | st.text(max_size=5),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


@given(JSON_VALUES)
def test_fuzz_usage_objects_never_raise_nor_go_negative(value: object) -> None:
    for parse in (usage_from_openai, usage_from_anthropic):
        result = parse(value)
        if result is not None:
            assert min(result.input_cache_hit, result.input_cache_miss, result.output) >= 0
            assert result.reasoning >= 0


COUNTS = st.integers(min_value=0, max_value=10**12)


@given(
    hit=COUNTS,
    miss=COUNTS,
    output=COUNTS,
    reasoning=COUNTS,
    noise=st.integers(min_value=0, max_value=5),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
    eol=st.sampled_from([b"\n", b"\r\n"]),
)
def test_fuzz_stream_round_trip(
    hit: int, miss: int, output: int, reasoning: int, noise: int, cuts: list[int], eol: bytes
) -> None:
    usage = {
        "prompt_tokens": hit + miss,
        "completion_tokens": output,
        "prompt_cache_hit_tokens": hit,
        "prompt_cache_miss_tokens": miss,
        "completion_tokens_details": {"reasoning_tokens": reasoning},
    }
    lines = [b": keep-alive"] + [_chunk({"content": "字" * i}) for i in range(noise)]
    stream = _sse(*lines, _chunk({}, "stop", usage), b"data: [DONE]", eol=eol)
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert scan(*pieces) == Usage(hit, miss, output, reasoning)


# --- Responses API and reported tool calls ---------------------------------------------------

RESPONSES_USAGE = {
    "input_tokens": 100,
    "input_tokens_details": {"cached_tokens": 80},
    "output_tokens": 50,
    "output_tokens_details": {"reasoning_tokens": 30},
    "total_tokens": 150,
}


def test_responses_body_counts_cached_tokens_inside_input() -> None:
    """The issue's example: 100 input of which 80 cached, 50 output of which 30 reasoning."""
    body = json.dumps({"object": "response", "output": [], "usage": RESPONSES_USAGE}).encode()
    assert usage_from_json_body(body) == Usage(80, 20, 50, 30)


def test_responses_usage_nested_under_response_is_read_too() -> None:
    body = json.dumps({"response": {"usage": RESPONSES_USAGE, "output": []}}).encode()
    assert usage_from_json_body(body) == Usage(80, 20, 50, 30)


def test_responses_stream_usage_comes_from_response_completed() -> None:
    created = {"type": "response.created", "response": {"usage": None, "output": []}}
    item = {"type": "web_search_call", "id": "ws_1", "status": "completed"}
    completed = {
        "type": "response.completed",
        "response": {"usage": RESPONSES_USAGE, "output": [item, {"type": "message"}]},
    }
    scanner = StreamUsageScanner()
    for event in (created, completed):
        scanner.feed(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    assert scanner.finish() == Usage(80, 20, 50, 30, (("web_search", 1),))


@pytest.mark.parametrize(
    ("output", "calls"),
    [
        ([], ()),
        ([{"type": "web_search_call", "status": "completed"}] * 2, (("web_search", 2),)),
        (
            [
                {"type": "web_fetch_call"},
                {"type": "web_search_call", "status": "failed"},  # not billed
                {"type": "function_call", "name": "f"},  # the client's own tool
                {"type": "message"},
                "junk",
            ],
            (("web_fetch", 1),),
        ),
    ],
)
def test_responses_tool_calls_are_output_items(output: list[Any], calls: Any) -> None:
    body = json.dumps({"usage": RESPONSES_USAGE, "output": output}).encode()
    found = usage_from_json_body(body)
    assert found is not None and found.tool_calls == calls


@pytest.mark.parametrize(
    "usage",
    [
        {**RESPONSES_USAGE, "input_tokens_details": {"cached_tokens": 101}},  # more than input
        {**RESPONSES_USAGE, "output_tokens_details": {"reasoning_tokens": 51}},
        {**RESPONSES_USAGE, "input_tokens_details": {"cached_tokens": -1}},
        {**RESPONSES_USAGE, "input_tokens_details": "80"},
        {"input_tokens_details": {"cached_tokens": 0}, "output_tokens": 5},  # no input_tokens
    ],
)
def test_responses_usage_unreadable(usage: dict[str, Any]) -> None:
    assert usage_from_json_body(json.dumps({"usage": usage}).encode()) is None


def test_anthropic_server_tool_use() -> None:
    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "server_tool_use": {"web_search_requests": 2, "web_fetch_requests": 0},
    }
    assert usage_from_json_body(json.dumps({"usage": usage}).encode()) == Usage(
        0, 10, 5, 0, (("web_search", 2),)
    )
    bad = {**usage, "server_tool_use": {"web_search_requests": -1}}
    assert usage_from_json_body(json.dumps({"usage": bad}).encode()) is None


def test_anthropic_stream_server_tool_use_in_message_delta() -> None:
    start = {
        "type": "message_start",
        "message": {"usage": {"input_tokens": 10, "output_tokens": 1}},
    }
    delta = {
        "type": "message_delta",
        "usage": {"output_tokens": 7, "server_tool_use": {"web_fetch_requests": 1}},
    }
    scanner = StreamUsageScanner()
    for event in (start, delta):
        scanner.feed(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
    assert scanner.finish() == Usage(0, 10, 7, 0, (("web_fetch", 1),))
