"""Command line: `deepseek-exporter` serves, `balance` checks once, `simulate` fakes the API,
`backtest` replays a balance history.

No flag is ever dropped or ignored. Every flag is accepted before and after a command and means
the same in both places; a flag given twice, a flag that does not apply to the command, or two
flags that make no sense together are refused with one line, and every bad value is named with
its flag (``--web.listen-address: "http://localhost:9402" is not host:port``). Values are checked
by the same parsers the configuration file uses. Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from exporter import __version__, eventloop
from exporter.app import create_app, load_all, serve
from exporter.balance.store import StorageLocked
from exporter.config import (
    ConfigError,
    parse_duration,
    parse_external_url,
    parse_listen_address,
    parse_url,
    quote,
)
from exporter.logs import LEVELS, setup_logging

log = logging.getLogger("exporter")

PROG = "deepseek-exporter"
NO_ACCOUNTS = "no accounts: set DEEPSEEK_API_KEY, list accounts in --config.file, or try --demo"
EXIT_USAGE = 2
SERVE, BALANCE, SIMULATE, BACKTEST = "serve", "balance", "simulate", "backtest"
# Where a flag given after a command lands in the namespace, to tell it from one given before.
AFTER = "after_"


class UsageError(Exception):
    """A command line that cannot be run as typed; the message is one line."""


def _one_of(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"{quote(text)} is not one of {', '.join(choices)}")
        return text

    return parse


def _existing_file(text: str) -> str:
    path = Path(text)
    if not path.exists():
        raise ValueError(f"{quote(text)}: no such file")
    if not path.is_file():
        raise ValueError(f"{quote(text)} is not a file")
    return text


def _listen_address(text: str) -> str:
    parse_listen_address(text)
    return text


def _duration(text: str) -> str:
    parse_duration(text)
    return text


def _workers(text: str) -> str:
    if text != "auto" and not (text.isdigit() and 1 <= int(text) <= 1024):
        raise ValueError(f"{quote(text)}: must be auto or a number of processes (1 to 1024)")
    return text


@dataclass(frozen=True)
class Flag:
    name: str
    help: str
    commands: frozenset[str]
    metavar: str | None = None  # None: a switch that takes no value
    parse: Callable[[str], Any] | None = None  # raises ValueError naming the value
    default: Any = None

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace(".", "_").replace("-", "_")


_EVERYWHERE = frozenset({SERVE, BALANCE, SIMULATE, BACKTEST})
_READERS = frozenset({SERVE, BALANCE})  # the commands that read the configuration
_SERVER = frozenset({SERVE})
_BACKTEST = frozenset({BACKTEST})

FLAGS: tuple[Flag, ...] = (
    Flag(
        "--config.file",
        "YAML configuration file (default: one account named default from $DEEPSEEK_API_KEY; "
        "backtest: the accounts' settings, keys are not read)",
        _READERS | _BACKTEST,
        "FILE",
        _existing_file,
    ),
    Flag(
        "--config.check",
        "validate the configuration (and the files it names) and exit: 0 valid, 1 not",
        _SERVER,
    ),
    Flag(
        "--deepseek.base-url",
        "DeepSeek API base URL (default https://api.deepseek.com; overrides deepseek.base_url)",
        _READERS,
        "URL",
        parse_url,
    ),
    Flag(
        "--web.listen-address",
        "metrics listener, host:port; :port listens on every address (default :9402)",
        _SERVER,
        "ADDR",
        _listen_address,
    ),
    Flag(
        "--web.config.file",
        "exporter-toolkit web config file (TLS, basic auth) for the metrics listener",
        _SERVER,
        "FILE",
        _existing_file,
    ),
    Flag(
        "--web.shutdown-timeout",
        "how long in-flight requests may finish after SIGTERM (default 30s)",
        _SERVER,
        "DURATION",
        _duration,
    ),
    Flag(
        "--web.external-url",
        "the URL people and Alertmanager reach this exporter at, e.g. behind a proxy "
        "(https://deepseek-exporter.example.com); the alerts' runbook links start with it",
        _SERVER,
        "URL",
        parse_external_url,
    ),
    Flag(
        "--proxy.listen-address",
        "metering proxy listener, host:port; :port listens on every address (default :8402)",
        _SERVER,
        "ADDR",
        _listen_address,
    ),
    Flag(
        "--proxy.workers",
        "processes serving the proxy listener, sharing its port; auto: one per CPU this "
        "process may use (default 1; overrides proxy.workers)",
        _SERVER,
        "N",
        _workers,
    ),
    Flag(
        "--storage.path",
        "directory of the balance history that survives restarts (default data/, none with "
        "--demo); an empty value disables storing",
        _SERVER,
        "DIR",
    ),
    Flag(
        "--history",
        "backtest: the balance history to replay, CSV (timestamp,account,currency,balance) or "
        "the JSON of Prometheus' /api/v1/query_range for deepseek_balance; - reads standard input",
        _BACKTEST,
        "FILE",
    ),
    Flag(
        "--rules",
        "backtest: instead of the metrics, print when each alert of this rule file would have "
        "fired (runs promtool test rules)",
        _BACKTEST,
        "FILE",
        _existing_file,
    ),
    Flag(
        "--promtool",
        "backtest: the promtool binary for --rules (default promtool, from PATH)",
        _BACKTEST,
        "PATH",
        None,
        "promtool",
    ),
    Flag(
        "--log.level",
        "only log messages of this level or above: debug, info, warn, error (default info)",
        _EVERYWHERE,
        "LEVEL",
        _one_of(LEVELS),
        "info",
    ),
    Flag(
        "--log.format",
        "log line format: logfmt or json (default logfmt)",
        _EVERYWHERE,
        "FORMAT",
        _one_of(("logfmt", "json")),
        "logfmt",
    ),
    Flag(
        "--demo",
        "run against a built-in simulated DeepSeek API with two demo accounts whose keys "
        "(sk-demo-steady, sk-demo-draining) your own code can use through the proxy",
        _SERVER,
    ),
    Flag(
        "--demo.simulator-address",
        "with --demo: where the simulated API listens (default: a free loopback port)",
        _SERVER,
        "ADDR",
        _listen_address,
    ),
    Flag(
        "--listen-address",
        "simulate: where the simulated API listens, host:port (default 127.0.0.1:8080; "
        ":port or 0.0.0.0:port exposes its unauthenticated control endpoints to the network)",
        frozenset({SIMULATE}),
        "ADDR",
        _listen_address,
        "127.0.0.1:8080",
    ),
)
FLAG_BY_DEST = {flag.dest: flag for flag in FLAGS}

# Flags that cannot be combined, with the reason given to the user.
CONFLICTS: tuple[tuple[str, str, str], ...] = (
    ("--demo", "--config.file", "the demo brings its own accounts"),
    ("--demo", "--config.check", "the demo has no configuration to check"),
    ("--demo", "--deepseek.base-url", "the demo talks to its own simulated API"),
)
# A flag that means something only together with another.
REQUIRES: tuple[tuple[str, str], ...] = (
    ("--demo.simulator-address", "--demo"),
    ("--promtool", "--rules"),
)
# Flags a command cannot run without.
REQUIRED: dict[str, tuple[str, ...]] = {BACKTEST: ("--history",)}
# Near misses worth a hint when a flag does not apply to a command.
HINTS = {
    (SERVE, "--listen-address"): "--web.listen-address",
    (SIMULATE, "--web.listen-address"): "--listen-address",
}

DESCRIPTIONS = {
    SERVE: "Prometheus exporter and metering proxy for DeepSeek API accounts.",
    BALANCE: "Poll every configured account's balance once and print a table: for cron jobs, "
    'and for "is my key working again after a top-up?".',
    SIMULATE: "Serve a simulated DeepSeek API on its own, with four demo accounts (keys "
    '"sk-sim-" + account name) and unauthenticated test-only control endpoints under '
    "/_simulator/. It listens on loopback unless told otherwise.",
    BACKTEST: "Replay a balance history through the exporter's own code and write, in "
    "OpenMetrics with a timestamp on every sample (what promtool tsdb create-blocks-from "
    "openmetrics backfills), every balance metric it would have exposed at each input time; "
    "or, with --rules, when each alert would have fired.",
}
EPILOGS = {
    SERVE: "commands (each has --help):\n"
    "  balance    poll every account once, print a table, exit 0 ok / 1 low / 2 error\n"
    "  simulate   serve the simulated DeepSeek API on its own\n"
    "  backtest   replay a balance history: the metrics, or when each alert would have fired\n\n"
    "Flags work before and after a command. Without DEEPSEEK_API_KEY or --config.file there\n"
    "is nothing to watch: try --demo. Exit status: 0 after a clean shutdown, 1 when the\n"
    "configuration is refused or a listener cannot bind, 2 for a bad command line.",
    BALANCE: "exit status:\n"
    "  0  every account is available and at or above its low_balance_threshold\n"
    "  1  an account is low (under its threshold) or unavailable (cannot pay for calls)\n"
    "  2  a poll failed (bad key, network, bad reply), or a bad configuration or command line\n\n"
    "example:\n"
    "  deepseek-exporter balance --config.file=deepseek.yml\n"
    "  ACCOUNT  CURRENCY  TOTAL   GRANTED  TOPPED_UP  AVAILABLE  STATUS\n"
    "  prod     CNY       110.00  10.00    100.00     yes        ok",
    SIMULATE: "exit status: 0 after SIGINT or SIGTERM, 1 when it cannot listen, "
    "2 for a bad command line.",
    BACKTEST: "exit status: 0 replayed, 1 bad input (one line naming the row; nothing "
    "written), 2 for a bad command line.\n\n"
    "examples:\n"
    "  deepseek-exporter backtest --history=history.csv --config.file=deepseek.yml > replay.om\n"
    "  deepseek-exporter backtest --history=range.json --rules=deepseek-rules.yml",
}


class _Parser(argparse.ArgumentParser):
    """argparse, with every complaint turned into one line that names the flag."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(_rephrase(message))


def _rephrase(message: str) -> str:
    if message.startswith("argument "):
        flag, _, problem = message.removeprefix("argument ").partition(": ")
        flag = flag.split("/")[0]
        if problem == "expected one argument":
            return f"{flag}: needs a value"
        if flag == "COMMAND" and "invalid choice" in problem:
            given = problem.split("'")[1] if "'" in problem else problem
            return f'unknown command "{given}" (commands: {BALANCE}, {SIMULATE}, {BACKTEST})'
        return f"{flag}: {problem}"
    if message.startswith("unrecognized arguments: "):
        first = message.removeprefix("unrecognized arguments: ").split()[0]
        if first.startswith("-"):
            return f"unknown flag {first.split('=')[0]} (see --help)"
        return f'unexpected argument "{first}" (see --help)'
    return message


class _Once(argparse.Action):
    """Stores a flag's value, converted by its parser; refuses the flag a second time."""

    def __init__(self, *args: Any, flag: Flag, **kwargs: Any) -> None:
        self.flag = flag
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        if hasattr(namespace, self.dest):
            raise UsageError(f"{self.flag.name}: given twice")
        if self.flag.metavar is None:
            setattr(namespace, self.dest, True)
            return
        try:
            self.flag.parse(values) if self.flag.parse else None
        except ValueError as err:
            raise UsageError(f"{self.flag.name}: {err}") from None
        setattr(namespace, self.dest, values)


def _add_flags(parser: argparse.ArgumentParser, command: str, prefix: str) -> None:
    for flag in FLAGS:
        shown = command in flag.commands
        options: dict[str, Any] = {
            "dest": prefix + flag.dest,
            "default": argparse.SUPPRESS,
            "help": flag.help if shown else argparse.SUPPRESS,
            "action": _Once,
            "flag": flag,
        }
        if flag.metavar is None:
            options["nargs"] = 0
        else:
            options["metavar"] = flag.metavar
        parser.add_argument(flag.name, **options)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=DESCRIPTIONS[SERVE],
        epilog=EPILOGS[SERVE],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    _add_flags(parser, SERVE, "")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for command in (BALANCE, SIMULATE, BACKTEST):
        sub = commands.add_parser(
            command,
            help=DESCRIPTIONS[command],
            description=DESCRIPTIONS[command],
            epilog=EPILOGS[command],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            allow_abbrev=False,
        )
        _add_flags(sub, command, AFTER)
    return parser


@dataclass(frozen=True)
class Invocation:
    """A command line that passed every check: the command and each flag's value."""

    command: str
    given: dict[str, Any]  # dest -> value, only the flags on the command line

    def get(self, dest: str) -> Any:
        return self.given.get(dest, FLAG_BY_DEST[dest].default)

    def has(self, dest: str) -> bool:
        return dest in self.given


def _refuse_unknown_flags(argv: Sequence[str]) -> None:
    """argparse would take ``--conf x`` for an unknown command "x"; name the flag instead."""
    known = {flag.name for flag in FLAGS} | {"-h", "--help", "--version"}
    for arg in argv:
        if arg == "--":
            return
        if arg.startswith("-") and arg != "-" and arg.split("=", 1)[0] not in known:
            raise UsageError(f"unknown flag {arg.split('=', 1)[0]} (see --help)")


def parse_command_line(argv: Sequence[str] | None) -> Invocation:
    """Parse and check a command line; raise UsageError with one line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    _refuse_unknown_flags(argv)
    namespace = build_parser().parse_args(argv)
    command = getattr(namespace, "command", None) or SERVE
    given: dict[str, Any] = {}
    for flag in FLAGS:
        before, after = flag.dest, AFTER + flag.dest
        if hasattr(namespace, before) and hasattr(namespace, after):
            raise UsageError(f"{flag.name}: given twice (before and after {command})")
        for dest in (before, after):
            if hasattr(namespace, dest):
                given[flag.dest] = getattr(namespace, dest)
        if flag.dest in given and command not in flag.commands:
            where = "without a command" if command == SERVE else f"to {command}"
            hint = HINTS.get((command, flag.name))
            raise UsageError(
                f"{flag.name} does not apply {where}" + (f": did you mean {hint}?" if hint else "")
            )
    names = {FLAG_BY_DEST[dest].name for dest in given}
    for first, second, reason in CONFLICTS:
        if first in names and second in names:
            raise UsageError(f"{first} and {second} cannot be used together: {reason}")
    for flag, needed in REQUIRES:
        if flag in names and needed not in names:
            raise UsageError(f"{flag} needs {needed}")
    for needed in REQUIRED.get(command, ()):
        if needed not in names:
            raise UsageError(f"{command} needs {needed}")
    return Invocation(command, given)


_OVERRIDES = (
    "deepseek_base_url",
    "web_listen_address",
    "proxy_listen_address",
    "proxy_workers",
    "web_config_file",
    "web_shutdown_timeout",
    "web_external_url",
)


def _overrides(invocation: Invocation) -> dict[str, str | None]:
    return {dest: invocation.given.get(dest) for dest in _OVERRIDES}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        invocation = parse_command_line(argv)
    except UsageError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(invocation.get("log_level"), invocation.get("log_format"))
    if invocation.command == SIMULATE:
        from exporter.simulator.standalone import main as simulate

        return simulate(invocation.get("listen_address"), flag="--listen-address")
    if invocation.command == BACKTEST:
        from exporter.balance.backtest import run_backtest

        return run_backtest(
            invocation.get("history"),
            invocation.get("config_file"),
            invocation.get("rules"),
            invocation.get("promtool"),
        )
    # Prometheus' flag and default; --demo stores nothing unless asked to.
    storage = invocation.get("storage_path")
    if storage is None:
        storage = "" if invocation.has("demo") else "data"
    storage_path = Path(storage) if storage else None
    if invocation.has("demo"):
        from exporter.demo import run_demo

        try:
            return eventloop.run(
                run_demo(
                    invocation.get("demo_simulator_address") or "127.0.0.1:0",
                    _overrides(invocation),
                    storage_path,
                )
            )
        except StorageLocked as err:
            log.error("%s", err)
            return 1
    config_file = invocation.get("config_file")
    try:
        config, prices = load_all(config_file, overrides=_overrides(invocation))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 1
    if invocation.command == BALANCE:
        from exporter.balance.check import check_balances

        return asyncio.run(check_balances(config))
    if invocation.has("config_check"):
        if not config.accounts:
            print(f"config error: {NO_ACCOUNTS}", file=sys.stderr)
            return 1
        print(f"config OK: {len(config.accounts)} account(s)")
        return 0
    if not config.accounts:
        # It runs (its pages and the proxy's "unknown" account work), but watches nothing.
        log.warning("%s", NO_ACCOUNTS)
    loader = functools.partial(load_all, config_file, None, _overrides(invocation))
    try:
        exporter = create_app(config, loader=loader, prices=prices, storage=storage_path)
    except StorageLocked as err:
        log.error("%s", err)
        return 1
    return eventloop.run(serve(exporter))
