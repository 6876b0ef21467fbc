"""YAML read the way the Go exporters read their web config: go-yaml v2 into Go types.

The exporter-toolkit unmarshals the web config with ``yaml.UnmarshalStrict`` from go-yaml v2,
so what a file means is decided by how that library fills Go strings, booleans, integers and
durations, not by YAML's own types. PyYAML resolves ``X-XSS-Protection: 1`` to an int and
``yes`` to True; go-yaml puts the scalar's text, ``1`` or ``yes``, into a Go string. To read
files exactly as the Go exporters do, the document is kept as a tree of :class:`Scalar`
nodes (the source text and PyYAML's resolved value side by side), and each field is then read
as the Go type the toolkit declares:

- a string field takes any scalar's text (``1``, ``yes``, ``1.50`` stay as written); null is "";
- a bool field takes YAML 1.1 booleans, including go-yaml's ``y``/``n``; null is false;
- an int field takes integers, and floats truncated; null is 0;
- a duration takes Go's ``time.ParseDuration`` syntax (``1m30s``), or an integer (nanoseconds);
- mappings and sequences go only where the Go type is a struct, map or slice; null is empty.

Duplicate keys are refused (go-yaml v2 refuses them in strict mode; PyYAML keeps the last).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["GoTypeError", "Scalar", "load", "parse_go_duration"]


class GoTypeError(Exception):
    """A value that the Go type of its field cannot hold; the message names what it got."""


@dataclass(frozen=True, slots=True)
class Scalar:
    """One YAML scalar: its text as written, PyYAML's resolved value, and whether it was plain."""

    text: str
    value: Any
    plain: bool

    @property
    def is_null(self) -> bool:
        return self.value is None


Node = Scalar | dict[str, "Node"] | list["Node"]

# go-yaml v2 resolves these plain scalars to booleans; PyYAML (like YAML 1.2) leaves y/n as text.
_GO_BOOLEANS = {"y": True, "Y": True, "n": False, "N": False}


class _Loader(yaml.SafeLoader):
    """SafeLoader, so no tag can build arbitrary objects; the tree is built by :func:`_tree`."""


def _yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load(text: str) -> Node | None:
    """The document as a tree of dicts, lists and Scalars; None for an empty document.

    Raises GoTypeError with a one-line "invalid YAML ..." message for syntax errors, duplicate
    keys and keys that are not scalars.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _tree(loader, node, set())
    except yaml.YAMLError as err:
        raise GoTypeError(_yaml_error(err)) from None
    finally:
        loader.dispose()


def _tree(loader: _Loader, node: yaml.Node, parents: set[int]) -> Node:
    if id(node) in parents:  # an alias to one of its own parents
        raise yaml.MarkedYAMLError(problem="recursive alias", problem_mark=node.start_mark)
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_object(node, deep=True)
        return Scalar(text=str(node.value), value=value, plain=node.style is None)
    parents = parents | {id(node)}
    if isinstance(node, yaml.SequenceNode):
        return [_tree(loader, item, parents) for item in node.value]
    assert isinstance(node, yaml.MappingNode)
    loader.flatten_mapping(node)  # resolves `<<` merge keys, as go-yaml does
    mapping: dict[str, Node] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise yaml.MarkedYAMLError(
                problem="a mapping key must be a plain value", problem_mark=key_node.start_mark
            )
        key = "" if _null_scalar(loader, key_node) else str(key_node.value)
        if key in mapping:
            raise yaml.MarkedYAMLError(
                problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
            )
        mapping[key] = _tree(loader, value_node, parents)
    return mapping


def _null_scalar(loader: _Loader, node: yaml.ScalarNode) -> bool:
    return loader.construct_object(node) is None


# --- Reading nodes as Go types --------------------------------------------------------------


def kind(node: Node | None) -> str:
    """What a node is, in the words of the error messages."""
    if node is None:
        return "null"
    if isinstance(node, dict):
        return "a mapping"
    if isinstance(node, list):
        return "a list"
    if node.is_null:
        return "null"
    value = node.value
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return f"a {type(value).__name__}"


def as_string(node: Node | None) -> str:
    """A Go string field: any scalar, as written; null is the empty string."""
    if node is None:
        return ""
    if not isinstance(node, Scalar):
        raise GoTypeError(f"expected a string, got {kind(node)}")
    return "" if node.is_null else node.text


def as_bool(node: Node | None, default: bool) -> bool:
    """A Go bool field; absent keeps `default`, null is false (go-yaml sets the zero value)."""
    if node is None:
        return default
    if isinstance(node, Scalar):
        if node.is_null:
            return False
        if isinstance(node.value, bool):
            return node.value
        if node.plain and node.text in _GO_BOOLEANS:
            return _GO_BOOLEANS[node.text]
    raise GoTypeError(f"expected a boolean, got {kind(node)}")


def as_int(node: Node | None) -> int:
    """A Go int field: integers, floats truncated toward zero (as go-yaml v2 does); null is 0."""
    if node is None:
        return 0
    if isinstance(node, Scalar):
        value = node.value
        if node.is_null:
            return 0
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value):
            return int(value)
    raise GoTypeError(f"expected an integer, got {kind(node)}")


def as_duration(node: Node | None) -> float:
    """A Go time.Duration field, in seconds: "1m30s", or an integer count of nanoseconds."""
    if node is None:
        return 0.0
    if isinstance(node, Scalar):
        value = node.value
        if node.is_null:
            return 0.0
        if isinstance(value, str):
            seconds = parse_go_duration(value)
            if seconds is not None:
                return seconds
            raise GoTypeError(
                f"invalid duration {value!r} (Go syntax: a number and a unit, ns us ms s m h, "
                "as in 1s or 1m30s)"
            )
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return int(value) / 1e9
    raise GoTypeError(f"expected a duration, got {kind(node)}")


def as_list(node: Node | None) -> list[Node] | None:
    """A Go slice field; None when absent or null (a nil slice), [] for an empty list."""
    if node is None or (isinstance(node, Scalar) and node.is_null):
        return None
    if not isinstance(node, list):
        raise GoTypeError(f"expected a list, got {kind(node)}")
    return node


def as_mapping(node: Node | None) -> dict[str, Node]:
    """A Go struct or map field; absent or null is empty."""
    if node is None or (isinstance(node, Scalar) and node.is_null):
        return {}
    if not isinstance(node, dict):
        raise GoTypeError(f"expected a mapping, got {kind(node)}")
    return node


_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float | None:
    """Seconds from Go's time.ParseDuration syntax ("1h2m3.5s", "-1s", "0"); None if invalid."""
    sign = 1.0
    rest = text
    if rest[:1] in ("-", "+"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        return None
    total = 0.0
    position = 0
    while position < len(rest):
        match = _DURATION_PART.match(rest, position)
        if match is None:
            return None
        total += float(match[1]) * _UNITS[match[2]]
        position = match.end()
    return sign * total
