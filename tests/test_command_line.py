"""The command line never drops or ignores a flag: each case as a user types it, on a real
process, with the flag before and after the command."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvloop

from exporter.simulator import Simulator
from tests.harness import USD_KEY, running_simulator, wait_until
from tests.test_cli import ENV, EXPORTER, PROD, USD, Process, free_port, run, write_config

ROOT = Path(__file__).resolve().parent.parent
NO_KEY_ENV = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
HOST_PORT_HINT = "is not host:port (e.g. :9402, 127.0.0.1:9402, [::1]:9402)"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator() as simulator:
        yield simulator


def refused(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a command line that must be refused: exit 2, one line on stderr, nothing else."""
    result = run(*args, env=env)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("deepseek-exporter: ")
    return lines[0].removeprefix("deepseek-exporter: ")


# ---- global flags before and after a command -------------------------------------------------


@pytest.mark.parametrize("position", ["before", "after"])
def test_base_url_is_used_before_and_after_balance(position: str, sim: Simulator) -> None:
    flag = ["--deepseek.base-url", sim.base_url]
    args = [*flag, "balance"] if position == "before" else ["balance", *flag]
    result = run(*args, env={**ENV, "DEEPSEEK_API_KEY": USD_KEY})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[1].split()[:3] == ["default", "USD", "20.00"]


@pytest.mark.parametrize("position", ["before", "after"])
def test_config_file_is_read_before_and_after_balance(
    position: str, sim: Simulator, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "good.yml", sim.base_url, PROD + USD)
    flag = [f"--config.file={config}"]
    args = [*flag, "balance"] if position == "before" else ["balance", *flag]
    result = run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]] == ["prod", "usd"]


def test_log_flags_before_and_after_the_command_together(sim: Simulator, tmp_path: Path) -> None:
    config = write_config(tmp_path / "good.yml", sim.base_url, PROD)
    result = run("--log.format=json", "balance", "--log.level", "debug", "--config.file", config)
    assert result.returncode == 0, result.stderr
    # debug in JSON: both flags were applied, one given before the command, one after.
    assert '"level": "debug"' in result.stderr or '"level":"debug"' in result.stderr


# ---- every bad value names its flag and the value --------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--web.listen-address=http://localhost:9402"],
            f'--web.listen-address: "http://localhost:9402" {HOST_PORT_HINT}',
        ),
        (["--web.listen-address", "9402"], f'--web.listen-address: "9402" {HOST_PORT_HINT}'),
        (
            ["--proxy.listen-address", "::1:8402"],
            f'--proxy.listen-address: "::1:8402" {HOST_PORT_HINT}',
        ),
        (
            ["--web.shutdown-timeout=abc"],
            '--web.shutdown-timeout: "abc" is not a duration '
            "(use e.g. 0, 500ms, 10s, 5m, 6h, 1d, 1w)",
        ),
        (
            ["--deepseek.base-url", "api.deepseek.com"],
            '--deepseek.base-url: "api.deepseek.com" is not an http:// or https:// URL',
        ),
        (
            ["balance", "--deepseek.base-url", "api.deepseek.com"],
            '--deepseek.base-url: "api.deepseek.com" is not an http:// or https:// URL',
        ),
        (
            ["--log.level", "verbose"],
            '--log.level: "verbose" is not one of debug, info, warn, error',
        ),
        (
            ["balance", "--log.level=verbose"],
            '--log.level: "verbose" is not one of debug, info, warn, error',
        ),
        (["simulate", "--log.format", "xml"], '--log.format: "xml" is not one of logfmt, json'),
        (["--log.format", "xml", "simulate"], '--log.format: "xml" is not one of logfmt, json'),
        (
            ["--config.file", "/nonexistent/deepseek.yml"],
            '--config.file: "/nonexistent/deepseek.yml": no such file',
        ),
        (
            ["balance", "--config.file=/nonexistent.yml"],
            '--config.file: "/nonexistent.yml": no such file',
        ),
        (
            ["--web.config.file", "/nonexistent-web.yml"],
            '--web.config.file: "/nonexistent-web.yml": no such file',
        ),
        (
            ["--web.external-url", "exporter.example.com"],
            '--web.external-url: "exporter.example.com" is not an http:// or https:// URL',
        ),
        (["simulate", "--listen-address", "8080"], f'--listen-address: "8080" {HOST_PORT_HINT}'),
        (["simulate", "--listen-address", "foo"], f'--listen-address: "foo" {HOST_PORT_HINT}'),
        (["--listen-address=8080", "simulate"], f'--listen-address: "8080" {HOST_PORT_HINT}'),
        (["--config.file"], "--config.file: needs a value"),
        (["balance", "--config.file"], "--config.file: needs a value"),
    ],
)
def test_a_bad_value_names_the_flag_and_the_value(args: list[str], message: str) -> None:
    assert refused(*args) == message


# ---- flags that do not apply, or make no sense together --------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--demo", "--config.file", "README.md"],
            "--demo and --config.file cannot be used together: the demo brings its own accounts",
        ),
        (
            ["--config.file", "README.md", "--demo"],
            "--demo and --config.file cannot be used together: the demo brings its own accounts",
        ),
        (
            ["--demo", "--config.check"],
            "--demo and --config.check cannot be used together: "
            "the demo has no configuration to check",
        ),
        (
            ["--deepseek.base-url=http://127.0.0.1:1", "--demo"],
            "--demo and --deepseek.base-url cannot be used together: "
            "the demo talks to its own simulated API",
        ),
        (["--demo.simulator-address", "127.0.0.1:0"], "--demo.simulator-address needs --demo"),
        (["balance", "--demo"], "--demo does not apply to balance"),
        (["--demo", "balance"], "--demo does not apply to balance"),
        (
            ["balance", "--web.listen-address", ":1"],
            "--web.listen-address does not apply to balance",
        ),
        (
            ["--web.listen-address", ":1", "balance"],
            "--web.listen-address does not apply to balance",
        ),
        (["balance", "--config.check"], "--config.check does not apply to balance"),
        (["simulate", "--config.file", "README.md"], "--config.file does not apply to simulate"),
        (
            ["--deepseek.base-url", "http://x", "simulate"],
            "--deepseek.base-url does not apply to simulate",
        ),
        (
            ["simulate", "--web.listen-address", "127.0.0.1:1"],
            "--web.listen-address does not apply to simulate: did you mean --listen-address?",
        ),
        (
            ["--listen-address", "127.0.0.1:1"],
            "--listen-address does not apply without a command: did you mean --web.listen-address?",
        ),
        (
            ["balance", "--listen-address", "127.0.0.1:1"],
            "--listen-address does not apply to balance",
        ),
        (
            ["--log.level", "debug", "balance", "--log.level", "info"],
            "--log.level: given twice (before and after balance)",
        ),
        (
            ["--web.listen-address", ":1", "--web.listen-address", ":2"],
            "--web.listen-address: given twice",
        ),
        (
            ["simulate", "--listen-address", "127.0.0.1:1", "--listen-address=127.0.0.1:2"],
            "--listen-address: given twice",
        ),
        (["--conf", "deepseek.yml"], "unknown flag --conf (see --help)"),
        (["balance", "--config=deepseek.yml"], "unknown flag --config (see --help)"),
        (["balanse"], 'unknown command "balanse" (commands: balance, simulate, backtest)'),
        (["backtest"], "backtest needs --history"),
        (["--config.file", "README.md", "backtest"], "backtest needs --history"),
        (
            ["backtest", "--history=h.csv", "--web.listen-address", ":1"],
            "--web.listen-address does not apply to backtest",
        ),
        (
            ["--promtool", "/usr/bin/promtool", "backtest", "--history", "-"],
            "--promtool needs --rules",
        ),
        (
            ["backtest", "--history", "-", "--rules", "nowhere.yml"],
            '--rules: "nowhere.yml": no such file',
        ),
        (["--storage.path", "data", "balance"], "--storage.path does not apply to balance"),
        (
            ["backtest", "--history", "-", "--storage.path=data"],
            "--storage.path does not apply to backtest",
        ),
        (["--history", "h.csv"], "--history does not apply without a command"),
        (["balance", "extra"], 'unexpected argument "extra" (see --help)'),
    ],
)
def test_flags_that_do_not_apply_or_conflict_are_refused(args: list[str], message: str) -> None:
    assert refused(*args) == message


# ---- help -------------------------------------------------------------------------------------


def test_every_command_and_flag_has_help() -> None:
    main = " ".join(run("--help").stdout.split())  # argparse wraps long lines
    for described in (
        "--log.level LEVEL only log messages of this level or above",
        "--log.format FORMAT log line format: logfmt or json",
        "--web.external-url URL the URL people and Alertmanager reach this exporter at",
        "--storage.path DIR directory of the balance history that survives restarts",
        "backtest replay a balance history",
    ):
        assert described in main
    balance = run("balance", "--help")
    assert balance.returncode == 0
    assert "Poll every configured account's balance once" in balance.stdout
    assert "exit status:" in balance.stdout
    for code in ("0  every account", "1  an account is low", "2  a poll failed"):
        assert code in balance.stdout
    # Only what applies to balance is listed.
    assert "--config.file" in balance.stdout and "--web.listen-address" not in balance.stdout
    simulate = run("simulate", "--help").stdout
    line = next(line for line in simulate.splitlines() if "--listen-address ADDR" in line)
    assert "simulate: where the simulated API listens" in simulate
    assert "127.0.0.1:8080" in simulate and line
    assert "--config.file" not in simulate
    backtest = run("backtest", "--help").stdout
    for flag in ("--history FILE", "--config.file FILE", "--rules FILE", "--promtool PATH"):
        assert flag in backtest
    assert "--web.listen-address" not in backtest and "exit status: 0 replayed" in backtest


# ---- durations --------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", ["0", "0s", "1w", "1y", "1h30m", "250ms"])
def test_every_prometheus_duration_is_accepted_on_the_command_line(
    duration: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yml", "http://127.0.0.1:1", PROD)
    result = run("--config.check", f"--web.shutdown-timeout={duration}", "--config.file", config)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config OK: 1 account(s)"


def test_poll_interval_zero_passes_config_check(tmp_path: Path) -> None:
    # The README's "0 disables polling", written as a bare 0 (YAML reads a number).
    config = tmp_path / "c.yml"
    config.write_text(
        "balance: {poll_interval: 0}\naccounts: [{name: prod, api_key_env: K_PROD}]\n"
    )
    result = run("--config.file", str(config), "--config.check")
    assert result.returncode == 0, result.stderr


# ---- configuration checks ---------------------------------------------------------------------


def test_config_check_refuses_a_config_with_no_account(tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("balance: {poll_interval: 1m}\n")
    for args in (["--config.file", str(config), "--config.check"], ["--config.check"]):
        result = run(*args, env=NO_KEY_ENV)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            "config error: no accounts: set DEEPSEEK_API_KEY, list accounts in --config.file, "
            "or try --demo"
        ]
    # The exporter itself starts (its pages work), and says the same line as a warning.
    process = Process(env=NO_KEY_ENV, cwd=tmp_path)  # where its default data/ goes
    try:
        wait_until(lambda: _answers(process.web + "/-/healthy"), timeout=20)
        assert process.stop() == 0
    finally:
        output = process.output()
    assert "level=warn" in output and "no accounts: set DEEPSEEK_API_KEY" in output


def test_balance_prints_a_failed_poll_once(tmp_path: Path) -> None:
    broken = write_config(tmp_path / "b.yml", "http://127.0.0.1:9", PROD)
    result = run("balance", "--config.file", str(broken))
    assert result.returncode == 2
    assert result.stderr == ""  # no log line repeating the table's row
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["ACCOUNT", "prod"]
    assert "error: connection" in result.stdout


# ---- listeners --------------------------------------------------------------------------------


def busy_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


def test_exporter_on_a_busy_port_says_which_flag_and_address(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yml", "http://127.0.0.1:1", PROD)
    holder, port = busy_port()
    with holder:
        result = run(
            "--config.file",
            str(config),
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--proxy.listen-address",
            f"127.0.0.1:{free_port()}",
            cwd=tmp_path,
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "level=error" in line]
    assert len(errors) == 1
    assert (
        f"cannot listen on 127.0.0.1:{port} (--web.listen-address, web.listen_address): "
        "address already in use" in errors[0]
    )


def test_a_listen_host_that_does_not_resolve_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yml", "http://127.0.0.1:1", PROD)
    result = run(
        "--config.file",
        str(config),
        "--web.listen-address=nosuchhost.invalid:9402",
        f"--proxy.listen-address=127.0.0.1:{free_port()}",
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if "level=error" in line]
    assert (
        "cannot listen on nosuchhost.invalid:9402 (--web.listen-address, web.listen_address): "
        in error
    )
    assert "[Errno" not in error and "unknown error" not in error


def test_simulate_on_a_busy_port_is_one_line() -> None:
    holder, port = busy_port()
    with holder:
        result = subprocess.run(
            [*EXPORTER, "simulate", "--listen-address", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"deepseek-exporter: cannot listen on 127.0.0.1:{port} (--listen-address): "
        "address already in use"
    ]


def start_simulate(*args: str) -> tuple[subprocess.Popen[str], str]:
    popen = subprocess.Popen(
        [*EXPORTER, "simulate", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert popen.stdout is not None
    return popen, popen.stdout.readline()


def stop(popen: subprocess.Popen[str]) -> str:
    popen.send_signal(signal.SIGTERM)
    _, err = popen.communicate(timeout=20)
    return err


def test_simulate_listens_on_loopback_unless_told_otherwise() -> None:
    # By default on 127.0.0.1:8080 (another program may hold that port on a shared machine:
    # then it says so, naming the same loopback address).
    popen, first = start_simulate()
    err = stop(popen) if popen.poll() is None else popen.communicate(timeout=20)[1]
    assert (
        first.startswith("DeepSeek API simulator listening on http://127.0.0.1:8080")
        or "cannot listen on 127.0.0.1:8080 (--listen-address)" in err
    ), (first, err)
    # Told otherwise, it listens on every address and warns that its control API is open.
    port = free_port()
    popen, first = start_simulate("--listen-address", f":{port}")
    try:
        assert f":{port}" in first
        reply = httpx.get(
            f"http://127.0.0.1:{port}/user/balance",
            headers={"Authorization": "Bearer sk-sim-demo-cny"},
        )
        assert reply.status_code == 200
    finally:
        err = stop(popen)
    assert "/_simulator/ control endpoints are unauthenticated" in err


def test_listeners_are_logged_as_they_listen(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yml", "http://127.0.0.1:1", PROD)
    web, proxy = free_port(), free_port()
    process = subprocess.Popen(
        [
            *EXPORTER,
            "--config.file",
            str(config),
            f"--web.listen-address=:{web}",
            f"--proxy.listen-address=[::1]:{proxy}",
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,  # where its default data/ goes
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{web}/-/healthy"), timeout=20)
        assert httpx.get(f"http://[::1]:{web}/-/healthy").status_code == 200  # every address
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0]
    assert f"metrics listener on http://127.0.0.1:{web} (every address, port {web})" in output
    assert f"proxy listener on http://[::1]:{proxy}, forwarding" in output
    assert "http://::1" not in output
    # uvloop is a dependency here (Linux): the server runs on it, and says so.
    assert f"event loop uvloop {uvloop.__version__}" in output


def _answers(url: str) -> bool:
    try:
        return httpx.get(url).status_code == 200
    except httpx.TransportError:
        return False


# ---- reload -----------------------------------------------------------------------------------


def test_reload_says_what_needs_a_restart(tmp_path: Path, sim: Simulator) -> None:
    web, web2, proxy = free_port(), free_port(), free_port()
    listeners = f"proxy: {{listen_address: '127.0.0.1:{proxy}'}}\n"
    config = write_config(
        tmp_path / "c.yml",
        sim.base_url,
        PROD,
        listeners + f"web: {{listen_address: '127.0.0.1:{web}'}}\n",
    )
    process = subprocess.Popen(
        [*EXPORTER, "--config.file", str(config)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,  # where its default data/ goes
    )
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{web}/-/ready"), timeout=20)
        config.write_text(
            config.read_text().replace(
                f"web: {{listen_address: '127.0.0.1:{web}'}}",
                f"web: {{listen_address: '127.0.0.1:{web2}', shutdown_timeout: 5s}}",
            )
        )
        reply = httpx.post(f"http://127.0.0.1:{web}/-/reload")
        assert reply.status_code == 200
        assert reply.text.splitlines() == [
            "Reloaded.",
            f"web.listen_address changed from '127.0.0.1:{web}' to '127.0.0.1:{web2}': "
            "takes effect on restart",
            "web.shutdown_timeout changed from 30s to 5s: takes effect on restart",
        ]
        assert _answers(f"http://127.0.0.1:{web}/-/healthy")  # still where it was
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0]
    assert "config reload: web.listen_address changed" in output


def test_reload_in_demo_mode_has_nothing_to_reload() -> None:
    process = Process("--demo", env=NO_KEY_ENV)
    try:
        process.wait_ready()
        reply = httpx.post(process.web + "/-/reload")
        assert reply.status_code == 200
        assert reply.text == "Nothing to reload: the demo runs without a configuration file.\n"
        assert process.stop() == 0
    finally:
        process.output()


# ---- scripts/run ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A copy of the working tree with no .venv, and what its first ./scripts/run printed."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    copy = tmp_path_factory.mktemp("checkout")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file() and not name.startswith(b".venv"):
            target = copy / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    first = subprocess.run(
        ["./scripts/run", "--version"],
        cwd=copy,
        env=NO_KEY_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert first.returncode == 0, first.stdout + first.stderr
    yield copy, first.stdout + first.stderr


def scripts_run(copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["./scripts/run", *args],
        cwd=copy,
        env=NO_KEY_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_scripts_run_installs_without_warnings(checkout: tuple[Path, str]) -> None:
    _, output = checkout
    # pip's own notes about this machine's package index configuration are not ours.
    ours = [
        line
        for line in output.splitlines()
        if not (
            line.startswith("WARNING: Location ")
            and line.endswith("neither a file nor a directory.")
        )
    ]
    assert ours == ["deepseek-exporter 0.1.0"]


def test_scripts_run_skips_the_install_when_nothing_changed(checkout: tuple[Path, str]) -> None:
    copy, _ = checkout
    pip = copy / ".venv" / "bin" / "pip"
    real_pip = pip.with_name("pip.real")
    pip.rename(real_pip)
    pip.write_text("#!/bin/sh\necho pip was called >&2\nexit 1\n")
    pip.chmod(0o755)
    pyproject = copy / "pyproject.toml"
    original = pyproject.read_text()
    try:
        again = scripts_run(copy, "--version")
        assert again.returncode == 0 and "pip was called" not in again.stderr
        assert again.stdout.strip() == "deepseek-exporter 0.1.0"
        pyproject.write_text(original + "\n# changed\n")
        changed = scripts_run(copy, "--version")
        assert "pip was called" in changed.stderr  # a changed pyproject.toml installs again
    finally:
        real_pip.replace(pip)
        pyproject.write_text(original)


def test_scripts_run_passes_commands_through(checkout: tuple[Path, str]) -> None:
    copy, _ = checkout
    # No key and a command: the command runs, not the demo.
    balance = scripts_run(copy, "balance")
    assert balance.returncode == 2
    assert "no accounts configured" in balance.stdout
    assert "demo" not in balance.stdout + balance.stderr
    simulate = scripts_run(copy, "simulate", "--listen-address", "8080")
    assert simulate.returncode == 2
    assert simulate.stderr.splitlines()[-1] == (
        f'deepseek-exporter: --listen-address: "8080" {HOST_PORT_HINT}'
    )
    usage = scripts_run(copy, "--help")
    assert usage.returncode == 0 and "usage: deepseek-exporter" in usage.stdout
