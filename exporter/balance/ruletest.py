"""Which alerts a replayed history would have fired: the rule file run by ``promtool test rules``.

Prometheus evaluates alerting rules only as time passes, so a backfilled history shows the metrics
but never the alerts. ``promtool test rules`` does evaluate rules over input series, step by
step, exactly as Prometheus would: this module turns a backtest's output into its input series
(one job and instance, plus the ``up`` and ``deepseek_exporter_build_info`` a healthy target
has), asks for ``ALERTS{alertstate="firing"}`` at every step with an empty expectation, and reads
the firing alerts from promtool's report of what it got instead.

Used by ``deepseek-exporter backtest --rules FILE``, by the tests and by the benchmark. Input
series need a fixed step: samples are placed on the grid of the smallest interval between
scrape times (Prometheus' ``query_range`` and the generated histories are on one already).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from exporter import __version__

Sample = tuple[str, dict[str, str], float, float]  # name, labels, value, Unix time
_DURATION = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_FAILURE = re.compile(r'^\s*expr: "ALERTS\{alertstate=\\"firing\\"\}", time: ([0-9a-z]+),\s*$')
_GOT = re.compile(r"\{([^{}]*)\} [-+0-9.eE]+")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class RuleTestError(Exception):
    """promtool is missing, or rejected the rules or the input."""


@dataclass(frozen=True)
class Series:
    """Input series on a grid: ``values[k]`` is at ``start + k * interval`` (None: no sample)."""

    start: float
    interval: float
    series: dict[str, list[float | None]]  # promtool series selector -> values

    @property
    def steps(self) -> int:
        return max((len(v) for v in self.series.values()), default=0)

    def time(self, step: int) -> float:
        return self.start + step * self.interval


@dataclass
class Firing:
    """One alert firing from ``start`` until ``end`` (None: still firing when the history ends)."""

    alertname: str
    labels: dict[str, str]
    start: float
    end: float | None = None
    times: list[float] = field(default_factory=list)  # every checked time it was firing

    @property
    def severity(self) -> str:
        return self.labels.get("severity", "")


def grid(samples: Iterable[Sample], job: str = "backtest", instance: str = "backtest") -> Series:
    """The samples as series on a fixed grid, with the labels a scrape adds."""
    samples = list(samples)
    if not samples:
        raise RuleTestError("no samples to test the rules against")
    times = sorted({s[3] for s in samples})
    gaps = [b - a for a, b in itertools.pairwise(times) if b - a >= 1]
    interval = float(round(min(gaps))) if gaps else 60.0
    start = times[0]
    steps = round((times[-1] - start) / interval) + 1
    series: dict[str, list[float | None]] = {}
    target = {"job": job, "instance": instance}
    for name, labels, value, at in samples:
        key = _selector(name, {**labels, **target})
        values = series.setdefault(key, [None] * steps)
        values[round((at - start) / interval)] = value
    for name, extra in (("up", {}), ("deepseek_exporter_build_info", {"version": __version__})):
        series[_selector(name, {**target, **extra})] = [1.0] * steps
    return Series(start, interval, series)


def _selector(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _values(values: Sequence[float | None]) -> str:
    out = []
    for v in values:
        if v is None:
            out.append("_")
        elif math.isinf(v):
            out.append("Inf" if v > 0 else "-Inf")
        elif math.isnan(v):
            out.append("NaN")
        else:
            out.append(repr(v))
    return " ".join(out)


def build_test(series: Series, rules: Path, checks: Iterable[int] | None = None) -> dict:
    """A promtool test file: the series, and an empty expectation of firing alerts at each of
    ``checks`` (steps; default every step)."""
    checks = range(series.steps) if checks is None else checks
    return {
        "rule_files": [str(rules.resolve())],
        "evaluation_interval": f"{series.interval:.0f}s",
        "tests": [
            {
                "name": "replay",
                "interval": f"{series.interval:.0f}s",
                "input_series": [
                    {"series": key, "values": _values(values)}
                    for key, values in series.series.items()
                ],
                "promql_expr_test": [
                    {
                        "expr": 'ALERTS{alertstate="firing"}',
                        "eval_time": f"{step * series.interval:.0f}s",
                        "exp_samples": [],
                    }
                    for step in checks
                ],
            }
        ],
    }


def run_promtool(test: dict, promtool: str = "promtool", timeout: float = 600) -> str:
    """Run ``promtool test rules`` on ``test``; its report (stdout and stderr)."""
    with tempfile.TemporaryDirectory(prefix="deepseek-ruletest-") as tmp:
        # JSON is YAML too, and Python writes it a hundred times faster than a YAML emitter.
        path = Path(tmp) / "test.yml"
        path.write_text(json.dumps(test), encoding="utf-8")
        try:
            proc = subprocess.run(
                [promtool, "test", "rules", str(path)],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise RuleTestError(f"{promtool} not found (Debian package prometheus)") from None
    return proc.stdout + proc.stderr


def alert_timeline(
    series: Series, rules: Path, promtool: str = "promtool", checks: Iterable[int] | None = None
) -> list[Firing]:
    """Every alert that fires at the checked steps, with when it started and ended."""
    checks = list(range(series.steps) if checks is None else checks)
    report = run_promtool(build_test(series, rules, checks), promtool)
    firing: dict[tuple[str, ...], list[float]] = {}
    names: dict[tuple[str, ...], dict[str, str]] = {}
    lines = report.splitlines()
    matched = False
    for i, line in enumerate(lines):
        found = _FAILURE.match(line)
        if not found:
            continue
        matched = True
        at = series.start + _seconds(found.group(1))
        got = next((g for g in lines[i + 1 : i + 4] if g.strip().startswith("got:")), "")
        for inner in _GOT.findall(got):
            labels = {k: v for k, v in _LABEL.findall(inner) if k not in ("__name__", "alertstate")}
            labels = {k: v for k, v in labels.items() if k not in ("job", "instance")}
            key = tuple(sorted(labels.items()))
            names[key] = labels
            firing.setdefault(key, []).append(at)
    if not matched and "SUCCESS" not in report:
        raise RuleTestError("promtool test rules failed: " + " ".join(report.split())[:500])
    step_of = {series.time(step): n for n, step in enumerate(checks)}
    timeline: list[Firing] = []
    for key, times in firing.items():
        labels = dict(names[key])
        alertname = labels.pop("alertname")
        times.sort()
        current: Firing | None = None
        for at in times:
            if current is not None and step_of[at] == step_of[current.times[-1]] + 1:
                current.times.append(at)
                continue
            if current is not None:
                current.end = series.time(checks[step_of[current.times[-1]] + 1])
            current = Firing(alertname, labels, at, times=[at])
            timeline.append(current)
        if current is not None and step_of[current.times[-1]] + 1 < len(checks):
            current.end = series.time(checks[step_of[current.times[-1]] + 1])
    timeline.sort(key=lambda f: (f.start, f.alertname, sorted(f.labels.items())))
    return timeline


def _seconds(duration: str) -> float:
    if duration == "0s":
        return 0.0
    parts = _DURATION.findall(duration)
    if "".join(n + u for n, u in parts) != duration:
        raise RuleTestError(f"cannot read promtool's time {duration!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)
