"""Scrape-time collector for the balance metrics.

Fresh metric families are built on every scrape from the poller's state (client_python's custom
collector pattern), so values older than ``max_staleness`` simply vanish instead of lingering.

Sample output::

    deepseek_balance{account="prod",currency="CNY"} 110.0
    deepseek_up{account="prod"} 1.0
    deepseek_balance_burn_rate{account="prod",currency="CNY",window="1h"} 0.0021
    deepseek_balance_burn_rate_baseline{account="prod",currency="CNY",window="1h"} 0.0018
    deepseek_balance_spend_spike_min_burn_rate{account="prod",currency="CNY"} 1.157e-05
    deepseek_balance_exhaustion_seconds{account="prod",currency="CNY"} 52380.9
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.balance.forecast import BURN_RATE_WINDOWS
from exporter.balance.poller import BalancePoller
from exporter.balance.seasonal import DAY
from exporter.clock import Clock


class BalanceCollector(Collector):
    def __init__(self, poller: BalancePoller, clock: Clock) -> None:
        self.poller = poller
        self.clock = clock

    def describe(self) -> list[Metric]:
        return []  # names depend on state; an empty describe keeps registration cheap

    def collect(self) -> Iterator[Metric]:
        if not self.poller.enabled:
            return  # a proxy-only replica: no poll state to report, not even deepseek_up 0
        now = self.clock()
        max_staleness = self.poller.balance.max_staleness
        forecast_window = self.poller.balance.forecast_window

        def gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=labels)

        total = gauge(
            "deepseek_balance", "Total balance (granted + topped up).", ["account", "currency"]
        )
        granted = gauge(
            "deepseek_balance_granted", "Granted (promotional) balance.", ["account", "currency"]
        )
        topped_up = gauge(
            "deepseek_balance_topped_up", "Topped-up (paid) balance.", ["account", "currency"]
        )
        available = gauge(
            "deepseek_account_available", "1 if the balance can pay for API calls.", ["account"]
        )
        threshold = gauge(
            "deepseek_balance_low_threshold",
            "Configured low-balance threshold, in the balance's currency.",
            ["account", "currency"],
        )
        up = gauge("deepseek_up", "1 if the last balance poll succeeded.", ["account"])
        last_success = gauge(
            "deepseek_balance_last_success_timestamp_seconds",
            "Unix time of the last successful balance poll.",
            ["account"],
        )
        duration = gauge(
            "deepseek_balance_poll_duration_seconds",
            "Duration of the last balance poll.",
            ["account"],
        )
        errors = CounterMetricFamily(
            "deepseek_balance_poll_errors",
            "Failed balance polls by reason.",
            labels=["account", "reason"],
        )
        spent = CounterMetricFamily(
            "deepseek_balance_spent",
            "Sum of observed balance decreases (continued across restarts from the history store).",
            labels=["account", "currency"],
        )
        topups = CounterMetricFamily(
            "deepseek_balance_topups",
            "Number of observed balance increases (top-ups) since start.",
            labels=["account", "currency"],
        )
        burn = gauge(
            "deepseek_balance_burn_rate",
            "Spend per second over the window (the covered span while less history exists).",
            ["account", "currency", "window"],
        )
        baseline = gauge(
            "deepseek_balance_burn_rate_baseline",
            "Usual spend per second over the window at this time of the week: the average of "
            "the same window 1 to 4 weeks ago (or of the hour after, when larger); absent until "
            "a week of history exists.",
            ["account", "currency", "window"],
        )
        spike_floor = gauge(
            "deepseek_balance_spend_spike_min_burn_rate",
            "Configured spend_spike_min_per_day, as spend per second: DeepSeekSpendSpike stays "
            "quiet below it.",
            ["account", "currency"],
        )
        via_proxy = gauge(
            "deepseek_account_all_traffic_via_proxy",
            "1 if the account's all_traffic_via_proxy is set: every call with its key is expected "
            "through the proxy, so DeepSeekUnmeteredSpend compares deducted with metered spend.",
            ["account"],
        )
        exhaustion = gauge(
            "deepseek_balance_exhaustion_seconds",
            "Seconds until the balance reaches zero, spending along the weekly profile of the "
            "forecast window; +Inf when nothing is spent.",
            ["account", "currency"],
        )

        for name, state in self.poller.states.items():
            up.add_metric([name], 1.0 if state.up else 0.0)
            via_proxy.add_metric([name], 1.0 if state.account.all_traffic_via_proxy else 0.0)
            for reason, count in state.errors.items():
                errors.add_metric([name, reason], count)
            if state.last_duration is not None:
                duration.add_metric([name], state.last_duration)
            if state.last_success is not None:
                last_success.add_metric([name], state.last_success)
            for currency, tracker in state.trackers.items():
                labels = [name, currency]
                spent.add_metric(labels, float(tracker.spent_total))
                topups.add_metric(labels, tracker.topups_total)
                # From the tracker's own latest observation: after a restart the stored history
                # gives burn rates and a forecast before the first poll has answered.
                last_at = tracker.last_at
                if last_at is None or now - last_at > max_staleness:
                    continue
                for window_name, window in BURN_RATE_WINDOWS.items():
                    rate = tracker.burn_rate(window, now)
                    if rate is not None:
                        burn.add_metric([*labels, window_name], rate)
                    usual = tracker.baseline_rate(window)
                    if usual is not None:
                        baseline.add_metric([*labels, window_name], usual)
                seconds = tracker.exhaustion_seconds(forecast_window, now)
                if seconds is not None:
                    exhaustion.add_metric(labels, seconds)
            reply = state.last_reply
            if reply is None or not state.is_fresh(now, max_staleness):
                continue
            available.add_metric([name], 1.0 if reply.is_available else 0.0)
            for balance in reply.balances:
                labels = [name, balance.currency]
                total.add_metric(labels, float(balance.total))
                granted.add_metric(labels, float(balance.granted))
                topped_up.add_metric(labels, float(balance.topped_up))
                if state.account.low_balance_threshold is not None:
                    threshold.add_metric(labels, float(state.account.low_balance_threshold))
                spike_floor.add_metric(labels, float(state.account.spend_spike_min_per_day) / DAY)

        yield from (total, granted, topped_up, available, threshold, up, last_success, duration)
        yield from (errors, spent, topups, burn, baseline, spike_floor, exhaustion, via_proxy)
