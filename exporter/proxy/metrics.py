"""Metrics of the metering proxy, created on an injected registry.

Label values are bounded whatever clients send: ``account`` is a configured name or ``unknown``,
``model`` a priced model, a per-request item of the price table (``web-search``) or ``other``,
``code`` an HTTP status, the rest fixed enumerations.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from exporter.config import AccountConfig

# The *_created series double the series count and tell Prometheus nothing it needs here.
disable_created_metrics()

UNKNOWN_ACCOUNT = "unknown"
OTHER_MODEL = "other"
# Codes every account starts with at 0, so that increase() sees the very first 402
# (prometheus/prometheus#1673).
PREINITIALISED_CODES = ("200", "400", "401", "402", "422", "429", "500", "503")
TOKEN_TYPES = ("input_cache_hit", "input_cache_miss", "output")
UPSTREAM_ERROR_REASONS = ("connect", "timeout", "reset")
STREAM_ABORT_REASONS = ("client_disconnect", "upstream_disconnect")
REJECT_REASONS = ("unauthorized", "body_too_large", "bad_target")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "deepseek_requests",
            "Upstream responses by HTTP status code.",
            ["account", "model", "code"],
            registry=registry,
        )
        self.tokens = Counter(
            "deepseek_tokens",
            "Billable tokens by type; the types add up to all tokens.",
            ["account", "model", "token_type"],
            registry=registry,
        )
        self.reasoning_tokens = Counter(
            "deepseek_reasoning_tokens",
            "Reasoning tokens (a part of the output tokens).",
            ["account", "model"],
            registry=registry,
        )
        self.cost = Counter(
            "deepseek_estimated_cost",
            "Estimated cost from usage and the price table, in the account's currency.",
            ["account", "model", "currency"],
            registry=registry,
        )
        self.duration = Histogram(
            "deepseek_request_duration_seconds",
            "Time from request to the last byte of the response.",
            ["account", "model"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "deepseek_time_to_first_token_seconds",
            "Streaming requests: time from request to the first data event.",
            ["account", "model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "deepseek_requests_in_flight",
            "Requests being proxied right now.",
            ["account"],
            registry=registry,
            # With worker processes (prometheus_client's multiprocess mode): the live ones' sum.
            multiprocess_mode="livesum",
        )
        self.upstream_errors = Counter(
            "deepseek_upstream_errors",
            "Requests that got no upstream response, by reason.",
            ["account", "reason"],
            registry=registry,
        )
        self.stream_aborts = Counter(
            "deepseek_stream_aborts",
            "Responses cut short, by which side went away.",
            ["account", "model", "reason"],
            registry=registry,
        )
        self.tool_calls = Counter(
            "deepseek_tool_calls",
            "Server-side tool calls that replies reported, by the per-request item they are "
            "billed as (web-search, web-fetch; other: not in the price table).",
            ["account", "model", "tool"],
            registry=registry,
        )
        self.usage_missing = Counter(
            "deepseek_usage_missing",
            "Successful completions whose response carried no usage.",
            ["account", "model"],
            registry=registry,
        )

        self.rejected = Counter(
            "deepseek_proxy_rejected_requests",
            "Requests the proxy answered itself without forwarding, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)

    def init_accounts(self, accounts: Iterable[AccountConfig], models: Iterable[str]) -> None:
        """Create the series alerts depend on at 0, for every configured account."""
        models = [*sorted(models), OTHER_MODEL]
        for name in [a.name for a in accounts]:
            self.in_flight.labels(name)
            for reason in UPSTREAM_ERROR_REASONS:
                self.upstream_errors.labels(name, reason)
            for model in models:
                for code in PREINITIALISED_CODES:
                    self.requests.labels(name, model, code)
