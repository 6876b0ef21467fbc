#!/usr/bin/env python3
"""Build grafana/dashboards/deepseek-overview.json (the committed file is this script's output).

    python3 grafana/build_dashboard.py          # rewrite the JSON
    python3 grafana/build_dashboard.py --check  # exit 1 if the JSON is not up to date

Plain Python, no dependencies: one function per panel, a layout helper that hands out ids and
grid positions. tests/test_alerts.py checks the JSON is this script's output and lints it.

Aggregation across exporter replicas, as in alerts/deepseek-rules.yml: balance gauges and
balance-derived counters are copies on every replica (max/min by account), proxy counters and
gauges are parts of the traffic (sum).
"""

# PromQL reads best on one line, even past 100 columns.
# ruff: noqa: E501

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "deepseek-overview.json"

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'job=~"$job", account=~"$account"'
JOB = 'job=~"$job"'
USD, CNY = "currencyUSD", "currency:¥"
RED, ORANGE, GREEN, BLUE = "red", "orange", "green", "blue"

Panel = dict[str, Any]


def target(
    ref: str, expr: str, legend: str = "", *, instant: bool = False, table: bool = False
) -> dict:
    t: dict[str, Any] = {
        "datasource": DS,
        "refId": ref,
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
        "editorMode": "code",
    }
    if table:
        t["format"] = "table"
    return t


def steps(*pairs: tuple[str, float | None]) -> dict:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in pairs]}


def red_green_0_1(bad: str, good: str) -> dict[str, Any]:
    """Options of a stat panel showing a 0/1 health gauge as red ``bad`` / green ``good``."""
    return {
        "unit": "none",
        "thresholds": steps((RED, None), (GREEN, 1)),
        "mappings": [
            {
                "type": "value",
                "options": {
                    "0": {"text": bad, "color": RED, "index": 0},
                    "1": {"text": good, "color": GREEN, "index": 1},
                },
            }
        ],
    }


def by_ref(ref: str, *props: tuple[str, Any]) -> dict:
    return {
        "matcher": {"id": "byFrameRefID", "options": ref},
        "properties": [{"id": k, "value": v} for k, v in props],
    }


def by_name(name: str, *props: tuple[str, Any]) -> dict:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": k, "value": v} for k, v in props],
    }


def fixed(color: str) -> dict:
    return {"mode": "fixed", "fixedColor": color}


def stat(
    title: str,
    description: str,
    targets: list[dict],
    *,
    unit: str,
    thresholds: dict | None = None,
    mappings: list | None = None,
    text_mode: str = "value_and_name",
    **extra: Any,
) -> Panel:
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "thresholds"},
                "thresholds": thresholds or steps((GREEN, None)),
                "mappings": mappings or [],
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": text_mode,
        },
        **extra,
    }


def timeseries(
    title: str,
    description: str,
    targets: list[dict],
    *,
    unit: str,
    overrides: list | None = None,
    stack: bool = False,
    draw: str = "line",
    custom: dict | None = None,
    thresholds: dict | None = None,
    **extra: Any,
) -> Panel:
    c = {
        "drawStyle": draw,
        "lineWidth": 1,
        "fillOpacity": 10 if not stack else 30,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "off"},
    }
    c.update(custom or {})
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "color": {"mode": "palette-classic"},
                "custom": c,
                "thresholds": thresholds or steps((GREEN, None)),
            },
            "overrides": overrides or [],
        },
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        **extra,
    }


def row(title: str, description: str) -> Panel:
    return {
        "type": "row",
        "title": title,
        "description": description,
        "datasource": DS,
        "collapsed": False,
        "panels": [],
    }


def two_currencies(make: Any) -> list[dict]:
    """The same query per currency (USD as refIds A.., CNY after), for per-currency units."""
    return [*make("USD"), *make("CNY")]


def unit_overrides(refs_usd: list[str], refs_cny: list[str]) -> list[dict]:
    return [by_ref(r, ("unit", USD)) for r in refs_usd] + [
        by_ref(r, ("unit", CNY)) for r in refs_cny
    ]


def display_labels(expr: str) -> str:
    """Adds `name` ("main CNY") and `unit` (Grafana's currency unit) labels, for rowsToFields."""
    named = f'label_join({expr}, "name", " ", "account", "currency")'
    usd = f'label_replace({named}, "unit", "{USD}", "currency", "USD")'
    return f'label_replace({usd}, "unit", "{CNY}", "currency", "CNY")'


# ---- panels --------------------------------------------------------------------------------


def balance_stat() -> Panel:
    balance = f"max by (account, currency) (deepseek_balance{{{SEL}}})"
    # The threshold, or one cent for accounts without one (so they turn red at zero only).
    threshold = (
        f"max by (account, currency) (deepseek_balance_low_threshold{{{SEL}}})"
        f" or 0.01 + 0 * {balance}"
    )
    p = stat(
        "Balance",
        "Total balance (granted + topped up) per account and currency, as DeepSeek's /user/balance "
        "reports it (max over exporter replicas). Red while under the account's "
        "low_balance_threshold (the DeepSeekBalanceLow condition), or at zero when none is "
        "configured. Each row of the two table queries becomes one field: the threshold sets the "
        "field's max, and the percentage thresholds turn it green at 100 % of it.",
        [
            target("A", display_labels(balance), instant=True, table=True),
            target("B", display_labels(f"({threshold})"), instant=True, table=True),
        ],
        unit=USD,
        thresholds={
            "mode": "percentage",
            "steps": [{"color": RED, "value": None}, {"color": GREEN, "value": 100}],
        },
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "rowsToFields",
                "options": {
                    "mappings": [
                        {"fieldName": "name", "handlerKey": "field.name"},
                        {"fieldName": "Value #A", "handlerKey": "field.value"},
                        {"fieldName": "Value #B", "handlerKey": "max"},
                        {"fieldName": "unit", "handlerKey": "unit"},
                        {"fieldName": "account", "handlerKey": "__ignore"},
                        {"fieldName": "currency", "handlerKey": "__ignore"},
                        {"fieldName": "Time", "handlerKey": "__ignore"},
                    ]
                },
            },
        ],
    )
    p["fieldConfig"]["defaults"]["min"] = 0
    p["fieldConfig"]["defaults"]["decimals"] = 2
    return p


def days_left_stat() -> Panel:
    return stat(
        "Time until the balance runs out",
        "Forecast time to zero, spending as each hour of the week usually costs (the profile "
        "of balance.forecast_window, 4 weeks by default); the most pessimistic replica. Orange under "
        "3 days, red under 24 hours: the two DeepSeekBalanceRunningOut thresholds. +Inf (nothing "
        "spent) shows as 'more than a year'.",
        [
            target(
                "A",
                f"min by (account, currency) (deepseek_balance_exhaustion_seconds{{{SEL}}})",
                "{{account}} {{currency}}",
                instant=True,
            )
        ],
        unit="dtdurations",
        thresholds=steps((RED, None), (ORANGE, 86400), (GREEN, 259200)),
        mappings=[
            {
                "type": "range",
                "options": {
                    "from": 31536000,
                    "to": None,
                    "result": {"text": "more than a year", "color": GREEN},
                },
            }
        ],
    )


def available_stat() -> Panel:
    return stat(
        "Account available",
        "Whether DeepSeek says the balance can pay for API calls (is_available in /user/balance, "
        "max over replicas). Unavailable means calls fail with 402: DeepSeekAccountUnavailable.",
        [
            target(
                "A",
                f"max by (account) (deepseek_account_available{{{SEL}}})",
                "{{account}}",
                instant=True,
            )
        ],
        **red_green_0_1("unavailable", "available"),
    )


def count_402_stat() -> Panel:
    return stat(
        "402s in the last 24 h",
        "Proxied requests DeepSeek refused with 402 Insufficient Balance over the last 24 hours, "
        "summed over replicas. Any 402 fires DeepSeekInsufficientBalance (critical).",
        [
            target(
                "A",
                f'round(sum by (account) (increase(deepseek_requests_total{{{SEL}, code="402"}}[24h])))',
                "{{account}}",
                instant=True,
            )
        ],
        unit="none",
        thresholds=steps((GREEN, None), (RED, 1)),
    )


def balance_over_time() -> Panel:
    def q(cur: str) -> list[dict]:
        a, b = ("A", "C") if cur == "USD" else ("B", "D")
        return [
            target(
                a,
                f'max by (account) (deepseek_balance{{{SEL}, currency="{cur}"}})',
                f"{{{{account}}}} balance ({cur})",
            ),
            target(
                b,
                f'max by (account) (deepseek_balance_low_threshold{{{SEL}, currency="{cur}"}})',
                f"{{{{account}}}} low threshold ({cur})",
            ),
        ]

    targets = sorted(two_currencies(q), key=lambda t: t["refId"])
    targets.append(
        target(
            "E",
            f"max by (account, currency) (increase(deepseek_balance_topups_total{{{SEL}}}[$__rate_interval])) > 0",
            "{{account}} top-up ({{currency}})",
        )
    )
    return timeseries(
        "Balance over time, with top-ups",
        "Balance per account (max over replicas) with its low threshold dashed; bars on the right "
        "axis mark the top-ups the exporter observed (balance increases).",
        targets,
        unit=USD,
        overrides=[
            *unit_overrides(["A", "C"], ["B", "D"]),
            by_ref(
                "C",
                ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
                ("custom.fillOpacity", 0),
            ),
            by_ref(
                "D",
                ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
                ("custom.fillOpacity", 0),
            ),
            by_ref(
                "E",
                ("unit", "none"),
                ("custom.drawStyle", "bars"),
                ("custom.axisPlacement", "right"),
                ("custom.axisLabel", "top-ups"),
                ("custom.fillOpacity", 80),
                ("color", fixed(GREEN)),
            ),
        ],
    )


def spend_per_day() -> Panel:
    def q(cur: str) -> list[dict]:
        a, b = ("A", "B") if cur == "USD" else ("C", "D")
        return [
            target(
                a,
                f'max by (account) (increase(deepseek_balance_spent_total{{{SEL}, currency="{cur}"}}[1d]))',
                f"{{{{account}}}} from balance ({cur})",
            ),
            target(
                b,
                f'sum by (account) (increase(deepseek_estimated_cost_total{{{SEL}, currency="{cur}"}}[1d]))',
                f"{{{{account}}}} metered by the proxy ({cur})",
            ),
        ]

    return timeseries(
        "Spend per day: balance vs metered",
        "Each bar is one day's spend. Left bars: what left the balance (sum of observed "
        "decreases; max over replicas, which all see the same balance). Right bars: the proxy's "
        "estimate from token usage and the price table (summed over replicas). Metered well below "
        "the balance means traffic that bypasses the proxy, or a price table out of date.",
        two_currencies(q),
        unit=USD,
        draw="bars",
        custom={"fillOpacity": 70, "barAlignment": -1},
        overrides=[
            *unit_overrides(["A", "B"], ["C", "D"]),
            by_ref("B", ("custom.barAlignment", 1)),
            by_ref("D", ("custom.barAlignment", 1)),
        ],
        interval="1d",
        timeFrom="14d",
    )


def spend_vs_usual() -> Panel:
    def q(cur: str) -> list[dict]:
        now, usual = ("A", "B") if cur == "USD" else ("C", "D")
        return [
            target(
                now,
                f'3600 * max by (account) (deepseek_balance_burn_rate{{{SEL}, currency="{cur}", window="1h"}})',
                f"{{{{account}}}} last hour ({cur})",
            ),
            target(
                usual,
                f'3600 * max by (account) (deepseek_balance_burn_rate_baseline{{{SEL}, currency="{cur}", window="1h"}})',
                f"{{{{account}}}} usual at this time of the week ({cur})",
            ),
        ]

    return timeseries(
        "Spend per hour: the last hour against the usual",
        "Solid: spend per hour over the last hour (the exporter's 1h burn rate). Dashed: what the "
        "same hour of the week usually costs (the same hour 1 to 4 weeks ago, or the hour after "
        "when larger; none before a week of history). DeepSeekSpendSpike fires when the last hour "
        "runs above 3 times the usual for 15 minutes, and above the account's "
        "spend_spike_min_per_day. Max over replicas.",
        two_currencies(q),
        unit=USD,
        overrides=[
            *unit_overrides(["A", "B"], ["C", "D"]),
            by_ref("B", ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})),
            by_ref("D", ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})),
        ],
    )


def requests_by_code() -> Panel:
    return timeseries(
        "Requests per second by status code",
        "Upstream responses per second through the metering proxy, by HTTP status, summed over "
        "accounts and replicas. 402 (Insufficient Balance) is drawn thick and red: any of it means "
        "the balance is empty.",
        [
            target(
                "A",
                f"sum by (code) (rate(deepseek_requests_total{{{SEL}}}[$__rate_interval]))",
                "{{code}}",
            )
        ],
        unit="reqps",
        overrides=[
            by_name(
                "402", ("color", fixed(RED)), ("custom.lineWidth", 4), ("custom.fillOpacity", 40)
            ),
            by_name("200", ("color", fixed(GREEN))),
        ],
    )


def error_ratio() -> Panel:
    failed = (
        f'sum by (account) (rate(deepseek_requests_total{{{SEL}, code=~"5..|429"}}[$__rate_interval])'
        f" or rate(deepseek_upstream_errors_total{{{SEL}}}[$__rate_interval]))"
    )
    total = (
        f"sum by (account) (rate(deepseek_requests_total{{{SEL}}}[$__rate_interval])"
        f" or rate(deepseek_upstream_errors_total{{{SEL}}}[$__rate_interval]))"
    )
    client = (
        f'sum by (account) (rate(deepseek_requests_total{{{SEL}, code=~"4.."}}[$__rate_interval]))'
    )
    return timeseries(
        "Error ratio",
        "Share of proxied requests that failed: 5xx, 429 and requests with no upstream answer "
        "(the DeepSeekHighErrorRate ratio; the red line is its 5 % threshold), and separately "
        "all 4xx (402, 401, 400, 422, 429).",
        [
            target("A", f"({failed}) / ({total})", "{{account}} 5xx, 429, no answer"),
            target("B", f"({client}) / ({total})", "{{account}} 4xx"),
        ],
        unit="percentunit",
        thresholds=steps((GREEN, None), (RED, 0.05)),
        custom={"thresholdsStyle": {"mode": "line"}},
        overrides=[by_ref("B", ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}))],
    )


def tokens() -> Panel:
    return timeseries(
        "Tokens per second by type and model",
        "Billable tokens per second from the usage DeepSeek reports, stacked by model and type "
        "(input cache hit, input cache miss, output). Reasoning tokens, a part of output, are the "
        "dashed lines (not stacked).",
        [
            target(
                "A",
                f"sum by (model, token_type) (rate(deepseek_tokens_total{{{SEL}}}[$__rate_interval]))",
                "{{model}} {{token_type}}",
            ),
            target(
                "B",
                f"sum by (model) (rate(deepseek_reasoning_tokens_total{{{SEL}}}[$__rate_interval]))",
                "{{model}} reasoning (part of output)",
            ),
        ],
        unit="short",
        stack=True,
        custom={"axisLabel": "tokens/s"},
        overrides=[
            by_ref(
                "B",
                ("custom.stacking", {"mode": "none", "group": "B"}),
                ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
                ("custom.fillOpacity", 0),
            )
        ],
    )


def cache_hit_ratio() -> Panel:
    hit = f'sum by (model) (rate(deepseek_tokens_total{{{SEL}, token_type="input_cache_hit"}}[$__rate_interval]))'
    inp = (
        f'sum by (model) (rate(deepseek_tokens_total{{{SEL}, token_type=~"input_cache_hit|input_cache_miss"}}'
        f"[$__rate_interval]))"
    )
    p = timeseries(
        "Prompt cache hit ratio",
        "Share of input tokens served from DeepSeek's context cache, per model. Cache hits cost a "
        "fraction of a miss: a drop raises cost at the same traffic.",
        [target("A", f"{hit} / {inp}", "{{model}}")],
        unit="percentunit",
    )
    p["fieldConfig"]["defaults"].update({"min": 0, "max": 1})
    return p


def cost_by_model() -> Panel:
    def q(cur: str) -> list[dict]:
        ref = "A" if cur == "USD" else "B"
        return [
            target(
                ref,
                f'sum by (model) (rate(deepseek_estimated_cost_total{{{SEL}, currency="{cur}"}}'
                f"[$__rate_interval])) * 3600",
                f"{{{{model}}}} ({cur})",
            )
        ]

    return timeseries(
        "Estimated cost by model (per hour)",
        "Cost per hour the metering proxy estimates from token usage and the price table "
        "(peak / off-peak prices), stacked by model, in each account's currency.",
        two_currencies(q),
        unit=USD,
        stack=True,
        overrides=unit_overrides(["A"], ["B"]),
    )


def deducted_vs_metered() -> Panel:
    def q(cur: str) -> list[dict]:
        deducted, metered = ("A", "B") if cur == "USD" else ("C", "D")
        return [
            target(
                deducted,
                f'max by (account) (increase(deepseek_balance_spent_total{{{SEL}, currency="{cur}"}}[1h]))',
                f"{{{{account}}}} deducted ({cur})",
            ),
            target(
                metered,
                f'sum by (account) (increase(deepseek_estimated_cost_total{{{SEL}, currency="{cur}", account!="unknown"}}[1h]))',
                f"{{{{account}}}} metered ({cur})",
            ),
        ]

    return timeseries(
        "Deducted against metered, last hour",
        "Solid: what the balance fell by over the last hour (max over replicas). Dashed: what the "
        "proxy metered for the account over the same hour (summed over replicas). A lasting gap "
        "is spend the proxy did not see or did not price: a leaked key, an app that bypasses the "
        "proxy, a stale price table. DeepSeekUnmeteredSpend watches it for accounts with "
        "all_traffic_via_proxy: true.",
        two_currencies(q),
        unit=USD,
        overrides=[
            *unit_overrides(["A", "B"], ["C", "D"]),
            by_ref("B", ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})),
            by_ref("D", ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})),
        ],
    )


def latency() -> Panel:
    def q(ref: str, metric: str, quantile: str, legend: str) -> dict:
        return target(
            ref,
            f"histogram_quantile({quantile}, sum by (le) "
            f"(rate({metric}_bucket{{{SEL}}}[$__rate_interval])))",
            legend,
        )

    return timeseries(
        "Latency and time to first token",
        "Request duration (to the last byte of the response) at p50, p95 and p99, and time to "
        "the first streamed token (dashed) at p50 and p95, over all proxied requests. Reasoning "
        "models and long outputs are slow by nature: compare with the tokens panel.",
        [
            q("A", "deepseek_request_duration_seconds", "0.5", "duration p50"),
            q("B", "deepseek_request_duration_seconds", "0.95", "duration p95"),
            q("C", "deepseek_request_duration_seconds", "0.99", "duration p99"),
            q("D", "deepseek_time_to_first_token_seconds", "0.5", "first token p50"),
            q("E", "deepseek_time_to_first_token_seconds", "0.95", "first token p95"),
        ],
        unit="s",
        overrides=[
            by_ref(r, ("custom.lineStyle", {"fill": "dash", "dash": [10, 10]})) for r in ("D", "E")
        ],
    )


def in_flight() -> Panel:
    return timeseries(
        "In-flight requests",
        "Requests being proxied right now, per account, summed over replicas. DeepSeek limits "
        "concurrency per account and model (429 over it).",
        [target("A", f"sum by (account) (deepseek_requests_in_flight{{{SEL}}})", "{{account}}")],
        unit="short",
    )


def proxy_problems() -> Panel:
    return timeseries(
        "Proxy problems",
        "Per second: requests that got no upstream answer (connect, timeout, reset), responses cut "
        "short (client or upstream went away), successful completions without usage (not metered), "
        "and requests the proxy refused itself (unknown client token, body too large, bad target).",
        [
            target(
                "A",
                f"sum by (reason) (rate(deepseek_upstream_errors_total{{{SEL}}}[$__rate_interval]))",
                "no upstream answer: {{reason}}",
            ),
            target(
                "B",
                f"sum by (reason) (rate(deepseek_stream_aborts_total{{{SEL}}}[$__rate_interval]))",
                "stream aborted: {{reason}}",
            ),
            target(
                "C",
                f"sum(rate(deepseek_usage_missing_total{{{SEL}}}[$__rate_interval]))",
                "usage missing",
            ),
            target(
                "D",
                f"sum by (reason) (rate(deepseek_proxy_rejected_requests_total{{{JOB}}}[$__rate_interval]))",
                "refused by the proxy: {{reason}}",
            ),
        ],
        unit="reqps",
    )


def poll_success() -> Panel:
    return stat(
        "Balance poll",
        "Whether the last balance poll succeeded, per account (max over replicas: ok while any "
        "replica polls). Failing for 10 minutes fires DeepSeekBalancePollFailing.",
        [target("A", f"max by (account) (deepseek_up{{{SEL}}})", "{{account}}", instant=True)],
        **red_green_0_1("failing", "ok"),
    )


def last_poll_age() -> Panel:
    return stat(
        "Last successful poll",
        "Seconds since the last successful balance poll of each account (the freshest replica). "
        "The exporter drops balance values older than balance.max_staleness (5 m by default).",
        [
            target(
                "A",
                f"time() - max by (account) (deepseek_balance_last_success_timestamp_seconds{{{SEL}}})",
                "{{account}}",
                instant=True,
            )
        ],
        unit="s",
        thresholds=steps((GREEN, None), (ORANGE, 180), (RED, 600)),
    )


def targets_up() -> Panel:
    return stat(
        "Exporter targets",
        "Prometheus's scrape of each exporter replica (up), for the targets that exported the "
        "exporter's build info in the last day, under any job name. Down for 5 minutes fires "
        "DeepSeekExporterDown.",
        [
            target(
                "A",
                f"up{{{JOB}}} * on (job, instance) group_left () "
                f"max by (job, instance) (max_over_time(deepseek_exporter_build_info{{{JOB}}}[1d]))",
                "{{instance}}",
                instant=True,
            )
        ],
        **red_green_0_1("down", "up"),
    )


def config_reload() -> Panel:
    return stat(
        "Config reload",
        "Whether each replica's last configuration reload (SIGHUP or POST /-/reload) succeeded. "
        "After a failed reload the exporter keeps running with its previous configuration.",
        [
            target(
                "A",
                f"deepseek_exporter_config_last_reload_successful{{{JOB}}}",
                "{{instance}}",
                instant=True,
            )
        ],
        **red_green_0_1("failed", "ok"),
    )


def versions() -> Panel:
    return stat(
        "Exporter versions",
        "Exporter versions running, with how many replicas run each.",
        [
            target(
                "A",
                f"count by (version) (deepseek_exporter_build_info{{{JOB}}})",
                "{{version}}",
                instant=True,
            )
        ],
        unit="none",
        thresholds=steps((BLUE, None)),
    )


def poll_errors() -> Panel:
    return timeseries(
        "Balance poll errors by reason",
        "Failed balance polls per second by account and reason: timeout, connection, "
        "unauthorized (the key is rejected), http_error, invalid_response. Summed over replicas.",
        [
            target(
                "A",
                f"sum by (account, reason) (rate(deepseek_balance_poll_errors_total{{{SEL}}}"
                f"[$__rate_interval]))",
                "{{account}} {{reason}}",
            )
        ],
        unit="ops",
    )


def poll_duration() -> Panel:
    return timeseries(
        "Balance poll duration",
        "How long the last balance poll took, per account (the slowest replica).",
        [
            target(
                "A",
                f"max by (account) (deepseek_balance_poll_duration_seconds{{{SEL}}})",
                "{{account}}",
            )
        ],
        unit="s",
    )


# ---- layout --------------------------------------------------------------------------------

LAYOUT: list[tuple[Any, int, int]] = [  # (panel, width, height); a row panel starts a new line
    (lambda: row("Balance", "What the accounts hold and how fast it goes."), 24, 1),
    (balance_stat, 8, 6),
    (days_left_stat, 6, 6),
    (available_stat, 4, 6),
    (count_402_stat, 6, 6),
    (balance_over_time, 12, 9),
    (spend_per_day, 12, 9),
    (spend_vs_usual, 24, 8),
    (lambda: row("Traffic", "What goes through the metering proxy."), 24, 1),
    (requests_by_code, 12, 8),
    (error_ratio, 12, 8),
    (tokens, 12, 8),
    (cache_hit_ratio, 12, 8),
    (cost_by_model, 12, 8),
    (deducted_vs_metered, 12, 8),
    (latency, 12, 8),
    (in_flight, 12, 8),
    (proxy_problems, 12, 8),
    (lambda: row("Exporter health", "Whether the numbers above can be trusted."), 24, 1),
    (poll_success, 6, 5),
    (last_poll_age, 6, 5),
    (targets_up, 4, 5),
    (config_reload, 4, 5),
    (versions, 4, 5),
    (poll_errors, 12, 8),
    (poll_duration, 12, 8),
]


def panels() -> list[Panel]:
    out, x, y, line_h = [], 0, 0, 0
    for i, (make, w, h) in enumerate(LAYOUT, start=1):
        p = make()
        if x + w > 24 or p["type"] == "row":
            x, y, line_h = 0, y + line_h, 0
        out.append({"id": i, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **p})
        x, line_h = x + w, max(line_h, h)
    return out


def variables() -> list[dict]:
    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "hide": 0,
            "refresh": 1,
            "regex": "",
            "includeAll": False,
            "multi": False,
            "options": [],
        },
        # Whatever the scrape job is called: the jobs that export this exporter's build info.
        # "All" by default, which also shows series without a job label (a backfilled replay of
        # `deepseek-exporter backtest`).
        {
            "name": "job",
            "label": "Job",
            "type": "query",
            "datasource": DS,
            "query": {"query": "label_values(deepseek_exporter_build_info, job)", "refId": "job"},
            "definition": "label_values(deepseek_exporter_build_info, job)",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "hide": 0,
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "includeAll": True,
            "allValue": ".*",
            "multi": False,
            "options": [],
        },
        {
            "name": "account",
            "label": "Account",
            "type": "query",
            "datasource": DS,
            "query": {
                "query": 'label_values(deepseek_up{job=~"$job"}, account)',
                "refId": "account",
            },
            "definition": 'label_values(deepseek_up{job=~"$job"}, account)',
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "hide": 0,
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "includeAll": True,
            "allValue": ".+",
            "multi": True,
            "options": [],
        },
    ]


def dashboard() -> dict:
    return {
        "uid": "deepseek-overview",
        "title": "DeepSeek overview",
        "description": "DeepSeek API accounts through deepseek-exporter: balance, forecast, spend, "
        "proxied traffic, errors, latency and the exporter's own health.",
        "tags": ["deepseek", "deepseek-exporter"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": []},
        "links": [
            {
                "title": "Runbooks",
                "type": "link",
                "icon": "doc",
                "targetBlank": True,
                "url": "https://github.com/deepseek-exporter/deepseek-exporter/tree/main/docs/runbooks",
                "tooltip": "What to do for each alert",
                "asDropdown": False,
                "includeVars": False,
                "keepTime": False,
                "tags": [],
            }
        ],
        "templating": {"list": variables()},
        "panels": panels(),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is out of date: run python3 {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
