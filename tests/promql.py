"""Every PromQL expression the project ships, and what they may reference.

Shared by tests/test_alerts.py (static checks: names, labels, syntax through promtool) and the
end-to-end tests (each expression evaluated by a real Prometheus that scraped the exporter):

    from promql import all_expressions
    for e in all_expressions():
        query(e.expr)          # Grafana variables already substituted, ready for /api/v1/query
        e.where                # "deepseek-overview.json panel 2 'Balance' target A", ...

Grafana variables are replaced so the text is plain PromQL: ``$__rate_interval`` -> ``1m``,
``$account`` -> ``.+``, ``$job`` -> ``deepseek-exporter`` (see SUBSTITUTIONS; override per call).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "deepseek-rules.yml"
DASHBOARDS = ROOT / "grafana" / "dashboards"

JOB = "deepseek-exporter"

# Longest names first, so "$__rate_interval" is not cut by "$__interval".
SUBSTITUTIONS: dict[str, str] = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval_ms": "60000",
    "$__interval": "1m",
    "${__interval}": "1m",
    "$__range_s": "3600",
    "$__range_ms": "3600000",
    "$__range": "1h",
    "${__range}": "1h",
    "${account}": ".+",
    "$account": ".+",
    "${job}": JOB,
    "$job": JOB,
}

# ---- what the exporter exports (names and labels; job and instance come from the scrape) ----

COMMON_TARGET_LABELS = frozenset({"job", "instance"})

EXPORTED: dict[str, frozenset[str]] = {
    name: frozenset(labels)
    for name, labels in {
        # balance poller
        "deepseek_balance": ("account", "currency"),
        "deepseek_balance_granted": ("account", "currency"),
        "deepseek_balance_topped_up": ("account", "currency"),
        "deepseek_account_available": ("account",),
        "deepseek_balance_low_threshold": ("account", "currency"),
        "deepseek_up": ("account",),
        "deepseek_balance_last_success_timestamp_seconds": ("account",),
        "deepseek_balance_poll_duration_seconds": ("account",),
        "deepseek_balance_poll_errors_total": ("account", "reason"),
        "deepseek_balance_spent_total": ("account", "currency"),
        "deepseek_balance_topups_total": ("account", "currency"),
        "deepseek_balance_burn_rate": ("account", "currency", "window"),
        "deepseek_balance_burn_rate_baseline": ("account", "currency", "window"),
        "deepseek_balance_spend_spike_min_burn_rate": ("account", "currency"),
        "deepseek_balance_exhaustion_seconds": ("account", "currency"),
        "deepseek_account_all_traffic_via_proxy": ("account",),
        "deepseek_exporter_build_info": ("version",),
        "deepseek_exporter_config_last_reload_successful": (),
        "deepseek_exporter_config_last_reload_success_timestamp_seconds": (),
        # metering proxy
        "deepseek_requests_total": ("account", "model", "code"),
        "deepseek_tokens_total": ("account", "model", "token_type"),
        "deepseek_reasoning_tokens_total": ("account", "model"),
        "deepseek_estimated_cost_total": ("account", "model", "currency"),
        "deepseek_request_duration_seconds_bucket": ("account", "model", "le"),
        "deepseek_request_duration_seconds_sum": ("account", "model"),
        "deepseek_request_duration_seconds_count": ("account", "model"),
        "deepseek_time_to_first_token_seconds_bucket": ("account", "model", "le"),
        "deepseek_time_to_first_token_seconds_sum": ("account", "model"),
        "deepseek_time_to_first_token_seconds_count": ("account", "model"),
        "deepseek_requests_in_flight": ("account",),
        "deepseek_upstream_errors_total": ("account", "reason"),
        "deepseek_stream_aborts_total": ("account", "model", "reason"),
        "deepseek_usage_missing_total": ("account", "model"),
        "deepseek_tool_calls_total": ("account", "model", "tool"),
        "deepseek_proxy_rejected_requests_total": ("reason",),
        # Prometheus itself
        "up": (),
        "scrape_duration_seconds": (),
    }.items()
}

# Label values that are fixed enumerations, per metric (None: for every metric with the label).
ENUMS: dict[tuple[str | None, str], frozenset[str]] = {
    (None, "currency"): frozenset({"CNY", "USD"}),
    (None, "window"): frozenset({"1h", "6h", "24h"}),
    (None, "token_type"): frozenset({"input_cache_hit", "input_cache_miss", "output"}),
    ("deepseek_balance_poll_errors_total", "reason"): frozenset(
        {"timeout", "connection", "unauthorized", "http_error", "invalid_response"}
    ),
    ("deepseek_upstream_errors_total", "reason"): frozenset({"connect", "timeout", "reset"}),
}

KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "atan2",
        "inf",
        "nan",
    }
)
LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    }
)


@dataclass(frozen=True)
class Expr:
    """One PromQL expression: where it comes from and its text with variables substituted."""

    where: str
    expr: str
    raw: str
    instant: bool = False  # a Grafana instant query (stat panels); rules are always instant


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)


# ---- extraction ------------------------------------------------------------------------------


def substitute(text: str, extra: Mapping[str, str] | None = None) -> str:
    subs = {**SUBSTITUTIONS, **(extra or {})}
    for key in sorted(subs, key=len, reverse=True):
        text = text.replace(key, subs[key])
    return text


_QUERY_TEMPLATE = re.compile(r'printf\s+"((?:[^"\\]|\\.)*)"([^}|]*)\|\s*query')
# Values for `$labels.x` arguments of template queries (any valid value will do).
SAMPLE_LABELS = {"account": "main", "currency": "USD", "instance": "localhost:9402", "job": JOB}


def _template_query(fmt: str, args: str) -> str:
    """printf "a{account=%q}" $labels.account | query  ->  a{account="main"}"""
    names = re.findall(r"\$labels\.(\w+)", args)
    text = fmt.replace('\\"', '"')
    for name in names:
        text = text.replace("%q", json.dumps(SAMPLE_LABELS.get(name, "x")), 1)
    return text


def rule_expressions(path: Path = RULES, extra: Mapping[str, str] | None = None) -> list[Expr]:
    """Every `expr:` of the rules file, plus queries inside annotation templates (`| query`)."""
    out: list[Expr] = []
    for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            name = rule.get("record") or rule["alert"]
            kind = "recording rule" if "record" in rule else "alert"
            severity = rule.get("labels", {}).get("severity")
            label = f"{kind} {name}" + (f" ({severity})" if severity else "")
            out.append(
                Expr(label, substitute(rule["expr"].strip(), extra), rule["expr"].strip(), True)
            )
            for key, text in rule.get("annotations", {}).items():
                for fmt, args in _QUERY_TEMPLATE.findall(text):
                    out.append(
                        Expr(
                            f"{label} annotation {key} query", _template_query(fmt, args), fmt, True
                        )
                    )
    return out


def dashboard_files(directory: Path = DASHBOARDS) -> list[Path]:
    return sorted(directory.glob("*.json"))


def iter_panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))  # collapsed rows hold their panels


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


def dashboard_expressions(path: Path, extra: Mapping[str, str] | None = None) -> list[Expr]:
    """Every target of every panel, every query variable (label_values(sel, l) -> sel), and
    every Prometheus annotation query of one dashboard."""
    dash = json.loads(path.read_text(encoding="utf-8"))
    out: list[Expr] = []
    for panel in iter_panels(dash.get("panels", [])):
        for t in panel.get("targets", []):
            if t.get("expr"):
                out.append(
                    Expr(
                        f"{path.name} panel {panel['id']} {panel['title']!r} target {t['refId']}",
                        substitute(t["expr"], extra),
                        t["expr"],
                        bool(t.get("instant")),
                    )
                )
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES.match(q)
        sel = m.group(1) if m else q
        out.append(Expr(f"{path.name} variable {var['name']}", substitute(sel, extra), q, True))
    for ann in dash.get("annotations", {}).get("list", []):
        if ann.get("expr"):
            out.append(
                Expr(
                    f"{path.name} annotation {ann['name']!r}",
                    substitute(ann["expr"], extra),
                    ann["expr"],
                    False,
                )
            )
    return out


def all_expressions(extra: Mapping[str, str] | None = None) -> list[Expr]:
    out = rule_expressions(extra=extra)
    for path in dashboard_files():
        out += dashboard_expressions(path, extra)
    return out


def recorded_names(path: Path = RULES) -> set[str]:
    groups = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    return {r["record"] for g in groups for r in g["rules"] if "record" in r}


def recorded_labels(name: str) -> frozenset[str]:
    """Labels of a recorded series, from its `level`: account_currency:... -> account, currency."""
    return frozenset(name.split(":")[0].split("_"))


# ---- a small PromQL lexer: enough to find metric names and label matchers -------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<number>0x[0-9a-fA-F]+
      |(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?(?:\d+(?:ms|[smhdwy]))*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=(){}\[\],:@])
""",
    re.X,
)


def tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot lex PromQL at {pos}: {expr[pos : pos + 30]!r}")
        pos = m.end()
        if m.lastgroup not in ("ws", "comment"):
            out.append((m.lastgroup, m.group()))
    return out


def _unquote(s: str) -> str:
    if s.startswith("`"):
        return s[1:-1]
    return bytes(s[1:-1], "utf-8").decode("unicode_escape")


def selectors(expr: str) -> list[Selector]:
    """Every vector selector: metric name and label matchers (`{__name__=...}` included)."""
    toks = tokens(expr)
    out: list[Selector] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "ident" and text.lower() in LABEL_LISTS and nxt == "(":
            i = toks.index(("op", ")"), i + 1) + 1  # a label list: skip it
            continue
        if kind == "ident" and text.lower() == "offset":
            i += 2
            continue
        if kind == "ident" and (
            nxt == "("
            or (
                text.lower() in AGGREGATIONS
                and nxt is not None
                and nxt.lower() in ("by", "without")
            )
        ):
            # a function, or an aggregation (`sum by (x) (...)` too)
            i += 1
            continue
        if text == "[":  # range or subquery: durations only
            i = toks.index(("op", "]"), i) + 1
            continue
        if (kind == "ident" and text.lower() not in KEYWORDS) or text == "{":
            metric = text if kind == "ident" else ""
            j = i + 1 if kind == "ident" else i
            matchers: list[tuple[str, str, str]] = []
            if j < len(toks) and toks[j][1] == "{":
                j += 1
                while toks[j][1] != "}":
                    if toks[j][1] == ",":
                        j += 1
                        continue
                    label, op, value = toks[j][1], toks[j + 1][1], _unquote(toks[j + 2][1])
                    matchers.append((label, op, value))
                    j += 3
                j += 1
            for label, op, value in matchers:
                if label == "__name__" and op == "=":
                    metric = value
            out.append(Selector(metric, tuple(matchers)))
            i = j
            continue
        i += 1
    return out


def metric_names(expr: str) -> set[str]:
    return {s.metric for s in selectors(expr)}
