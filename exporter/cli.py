"""Command line: `deepseek-exporter` serves, `balance` checks once, `simulate` fakes the API."""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import sys
from collections.abc import Sequence

from exporter import __version__
from exporter.app import create_app, load_all, serve
from exporter.config import ConfigError
from exporter.logs import LEVELS, setup_logging

log = logging.getLogger("exporter")


def _common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        help="YAML configuration file (default: one account from $DEEPSEEK_API_KEY)",
    )
    parser.add_argument(
        "--deepseek.base-url",
        dest="deepseek_base_url",
        metavar="URL",
        help="DeepSeek API base URL (overrides deepseek.base_url)",
    )
    parser.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info")
    parser.add_argument(
        "--log.format", dest="log_format", choices=("logfmt", "json"), default="logfmt"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepseek-exporter",
        description="Prometheus exporter and metering proxy for DeepSeek API accounts.",
    )
    parser.add_argument("--version", action="version", version=f"deepseek-exporter {__version__}")
    _common_flags(parser)
    parser.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the configuration and exit",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="web_listen_address",
        metavar="ADDR",
        help="metrics listener, host:port (default :9402)",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="exporter-toolkit web config (TLS, basic auth) for the metrics listener",
    )
    parser.add_argument(
        "--web.shutdown-timeout",
        dest="web_shutdown_timeout",
        metavar="DURATION",
        help="how long in-flight requests may finish after SIGTERM (default 30s)",
    )
    parser.add_argument(
        "--proxy.listen-address",
        dest="proxy_listen_address",
        metavar="ADDR",
        help="metering proxy listener, host:port (default :8402)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="run against a built-in simulated DeepSeek API with demo accounts",
    )
    parser.add_argument(
        "--demo.simulator-address",
        dest="demo_simulator_address",
        metavar="ADDR",
        default="127.0.0.1:0",
        help="where the demo's simulated API listens (default: a free loopback port)",
    )

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    balance = commands.add_parser(
        "balance",
        help="poll every account once, print a table, exit 0 ok / 1 low or unavailable / 2 error",
    )
    _common_flags(balance)
    simulate = commands.add_parser("simulate", help="serve the simulated DeepSeek API on its own")
    simulate.add_argument("--listen-address", default="127.0.0.1:8080", metavar="ADDR")
    simulate.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info")
    simulate.add_argument(
        "--log.format", dest="log_format", choices=("logfmt", "json"), default="logfmt"
    )
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, str | None]:
    names = (
        "deepseek_base_url",
        "web_listen_address",
        "proxy_listen_address",
        "web_config_file",
        "web_shutdown_timeout",
    )
    return {name: getattr(args, name, None) for name in names}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    if args.command == "simulate":
        from exporter.app import split_listen_address
        from exporter.simulator import run_standalone

        host, port = split_listen_address(args.listen_address)
        run_standalone(host or "0.0.0.0", port)
        return 0
    if getattr(args, "demo", False):
        from exporter.demo import run_demo

        return asyncio.run(run_demo(args.demo_simulator_address, _overrides(args)))
    try:
        config, prices = load_all(args.config_file, overrides=_overrides(args))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 1
    if args.command == "balance":
        from exporter.balance.check import check_balances

        return asyncio.run(check_balances(config))
    if args.config_check:
        print(f"config OK: {len(config.accounts)} account(s)")
        return 0
    if not config.accounts:
        log.warning(
            "no accounts configured: set DEEPSEEK_API_KEY, use --config.file, or try --demo"
        )
    loader = functools.partial(load_all, args.config_file, None, _overrides(args))
    return asyncio.run(serve(create_app(config, loader=loader, prices=prices)))
