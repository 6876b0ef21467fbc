"""Peer proxies for bench/proxy_bench.py: LiteLLM's proxy, installed and run as a pass-through.

nginx tells us how close the exporter's proxy gets to a proxy that does no work on the body; a
peer tells users what the same job costs in the tool they would otherwise pick. LiteLLM's proxy
is the common choice for "put a proxy in front of an OpenAI-compatible API", so the benchmark
runs it beside nginx, configured to do as little as it can:

* installed by :func:`ensure_litellm` into its own virtualenv under ``bench/.peers/litellm/``
  (a pinned version, so a report names what it measured; never into the project's venv, whose
  dependencies it would drag along);
* one model entry passing ``deepseek-chat`` through to the bench upstream as an
  OpenAI-compatible provider; no database, no callbacks, no telemetry, one worker, log level
  warning; the bench key as its master key (it refuses to start without one, and with no
  database that check is a comparison in memory);
* an isolated environment: no HTTP proxies, the bundled model cost map instead of a download
  (the network here reaches only package registries), a private HOME and working directory.

``python bench/peers.py --smoke`` installs it if needed, starts the upstream and LiteLLM, and
sends two completions and three streams (the default twice, then a one-chunk stream shaped in
the body) to each of them, printing what the benchmark would see. ``--install`` only installs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import benchlib
from benchlib import HOST, child_pids, free_port, stop_process, wait_port

LITELLM_VERSION = "1.108.7"
LITELLM_REQUIREMENT = f"litellm[proxy]=={LITELLM_VERSION}"
PEERS_DIR = benchlib.BENCH_DIR / ".peers"
LITELLM_VENV = PEERS_DIR / "litellm"
_MARKER = LITELLM_VENV / "installed.txt"  # holds the requirement once pip succeeded


def ensure_litellm() -> Path:
    """The ``litellm`` executable of a virtualenv holding the pinned LiteLLM proxy.

    Creates the virtualenv and installs into it when missing or when the pin changed; otherwise
    returns at once (the marker file is written only after pip succeeded).
    """
    executable = LITELLM_VENV / "bin" / "litellm"
    if executable.exists() and _MARKER.exists() and _MARKER.read_text() == LITELLM_REQUIREMENT:
        return executable
    python = LITELLM_VENV / "bin" / "python"
    started = time.monotonic()
    if not python.exists():
        print(f"peers: creating a virtualenv at {LITELLM_VENV}", flush=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(LITELLM_VENV)], check=True)
    print(f"peers: installing {LITELLM_REQUIREMENT} (a minute or two) ...", flush=True)
    _MARKER.unlink(missing_ok=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         LITELLM_REQUIREMENT],
        check=True,
    )  # fmt: skip
    if not executable.exists():
        raise RuntimeError(f"{LITELLM_REQUIREMENT} installed no {executable}")
    _MARKER.write_text(LITELLM_REQUIREMENT)
    print(f"peers: installed in {time.monotonic() - started:.0f} s", flush=True)
    return executable


def litellm_config(upstream_port: int) -> dict:
    """A pass-through: one model, no database, no callbacks, no background work.

    JSON is YAML, so the file needs no YAML library on this side.
    """
    return {
        "model_list": [
            {
                "model_name": "deepseek-chat",
                "litellm_params": {
                    "model": "openai/deepseek-chat",
                    "api_base": f"http://{HOST}:{upstream_port}",
                    "api_key": benchlib.API_KEY,
                },
            }
        ],
        "litellm_settings": {
            "telemetry": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "drop_params": False,
            "num_retries": 0,
            "request_timeout": 600,
        },
        "general_settings": {
            # it refuses to start without one; checked against the key in memory (no database)
            "master_key": benchlib.API_KEY,
            "disable_spend_logs": True,
            "disable_error_logs": True,
            "background_health_checks": False,
            "trusted_proxy_ranges": [],  # clients connect directly (else a warning at start)
        },
    }


def _isolated_env(home: Path) -> dict[str, str]:
    """The environment LiteLLM runs in: PATH and locale only from ours, plus its switches."""
    env = {key: os.environ[key] for key in ("PATH", "LANG", "LC_ALL") if key in os.environ}
    env.update(
        HOME=str(home),
        NO_PROXY="*",
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no download of the price list at import
        LITELLM_LOG="WARNING",
        LITELLM_MODE="PRODUCTION",  # no .env loading
        TELEMETRY="False",
        DISABLE_ADMIN_UI="True",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


class LiteLLM:
    """LiteLLM's proxy in front of the bench upstream, on one port for plain and SSE calls."""

    def __init__(self, tmp: Path, upstream_port: int, timeout: float = 120.0) -> None:
        executable = ensure_litellm()
        self.port = free_port()
        self.stream_port = self.port
        self.dir = tmp / "litellm"
        self.dir.mkdir(parents=True, exist_ok=True)
        config = self.dir / "config.yaml"
        config.write_text(json.dumps(litellm_config(upstream_port), indent=2))
        self.log = self.dir / "litellm.log"
        started = time.monotonic()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(executable),
                    "--config", str(config),
                    "--host", HOST,
                    "--port", str(self.port),
                    "--num_workers", "1",
                    "--telemetry", "False",
                ],
                cwd=self.dir,
                env=_isolated_env(self.dir),
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_port(self.port, timeout=timeout, proc=self.proc)
        except RuntimeError as exc:
            self.stop()
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"LiteLLM did not start: {exc}\n{tail}") from None
        self.startup_seconds = time.monotonic() - started

    def pids(self) -> list[int]:
        """The server process and everything it forked (recursively): its whole cost."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(child_pids(pid))
        return found

    def stop(self) -> None:
        forked = self.pids()[1:]
        stop_process(self.proc, signal.SIGTERM, timeout=15)
        for pid in forked:  # any child the server left behind (none with one uvicorn worker)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------
# the smoke check


async def _streams(port: int) -> list[tuple[str, benchlib.StreamResult, float]]:
    """The default stream twice (cold, warm), then a one-chunk stream shaped in the body, all on
    one keep-alive connection."""
    reader, writer = await asyncio.open_connection(HOST, port)
    results = []
    try:
        for name, body in (
            ("stream cold", benchlib.STREAM_BODY),
            ("stream warm", benchlib.STREAM_BODY),
            ("short", benchlib.stream_body(chunks=1, interval_ms=0)),
        ):
            started = time.monotonic()
            request = benchlib.build_request(port, benchlib.CHAT_PATH, body)
            result = await benchlib.sse_request(reader, writer, request)
            results.append((name, result, (time.monotonic() - started) * 1000))
    finally:
        writer.close()
    return results


def _smoke_target(name: str, port: int) -> None:
    client = benchlib.RawClient(port)
    try:
        for attempt in ("cold", "warm"):
            started = time.monotonic()
            status, body = client.call()
            elapsed = (time.monotonic() - started) * 1000
            usage = status == 200 and json.loads(body).get("usage") is not None
            print(f"{name:8} plain {attempt}: status {status}, usage {usage}, {elapsed:.1f} ms")
    finally:
        client.close()
    for kind, result, elapsed in asyncio.run(_streams(port)):
        delays = [(a - s) / 1e6 for a, s in zip(result.arrivals_ns, result.sent_ns, strict=True)]
        print(
            f"{name:8} {kind}: 200 chunked, {len(result.arrivals_ns)} timed chunks, usage and "
            f"[DONE] {result.done}, ttft {result.ttft_ms:.1f} ms, total {elapsed:.1f} ms, "
            f"delivery delay median {benchlib.percentile(delays, 50):.2f} ms "
            f"max {max(delays, default=float('nan')):.2f} ms"
        )


def smoke() -> None:
    executable = ensure_litellm()
    version = subprocess.run(
        [str(executable.parent / "python"), "-c",
         "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    print(f"litellm {version} at {executable}")
    upstream, upstream_port = benchlib.start_upstream()
    tmp = benchlib.make_tmp("peers-smoke-")
    peer = None
    try:
        peer = LiteLLM(tmp, upstream_port)
        rss = benchlib.rss_bytes(peer.pids()) / 2**20
        print(
            f"LiteLLM ready in {peer.startup_seconds:.1f} s on port {peer.port}; "
            f"pids {peer.pids()}, RSS {rss:.0f} MiB"
        )
        _smoke_target("direct", upstream_port)
        _smoke_target("litellm", peer.port)
        rss = benchlib.rss_bytes(peer.pids()) / 2**20
        cpu = benchlib.cpu_seconds(peer.pids())
        print(f"LiteLLM after the calls: RSS {rss:.0f} MiB, CPU {cpu:.1f} s since start")
    finally:
        if peer is not None:
            peer.stop()
        stop_process(upstream)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--install", action="store_true", help="only install LiteLLM")
    parser.add_argument("--smoke", action="store_true", help="one call and one stream through it")
    args = parser.parse_args()
    if args.smoke:
        smoke()
    else:
        print(ensure_litellm())


if __name__ == "__main__":
    main()
