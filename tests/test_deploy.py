"""Deployment artefacts, tested for real without a container engine or a cluster.

- ``Dockerfile``: its build stage is replayed on this machine (the build context filtered by
  ``.dockerignore``, its COPY and RUN steps with the image's paths under a temporary root), then
  the runtime stage's ENTRYPOINT and HEALTHCHECK run against the installed exporter.
- ``deploy/compose``: the file parses, every file it mounts exists, Prometheus's configuration
  passes ``promtool`` and Alertmanager's ``amtool`` with the mounts in place, the Grafana
  provisioning points at the compose services, the exporter wrapper picks demo or real mode.
- ``deploy/kubernetes``: ``kubectl kustomize`` builds it, every built object validates against
  the Kubernetes JSON schemas of ``kubernetes-validate`` (strict), the CRDs (ServiceMonitor,
  PrometheusRule) structurally; the objects fit together (labels, ports, uid, volumes) and the
  PrometheusRule carries exactly ``alerts/deepseek-rules.yml``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from exporter import __version__
from exporter.app import load_all
from exporter.simulator import Simulator
from tests.conftest import require_binary
from tests.harness import PROD_KEY, parse_samples, running_simulator

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
WRAPPER = COMPOSE_DIR / "exporter-entrypoint.sh"
KUSTOMIZE_DIR = ROOT / "deploy" / "kubernetes"
RULES_FILE = ROOT / "alerts" / "deepseek-rules.yml"
GENERATOR = ROOT / "scripts" / "gen-prometheusrule"
JOB = "deepseek-exporter"  # the job name the ServiceMonitor gives (the rules need none)
METRICS_PORT, PROXY_PORT = 9402, 8402  # the README's defaults


# ----------------------------------------------------------------------------------------------
# Exporter processes (also used by tests/test_replicas.py)

LISTENER = re.compile(r'msg="(metrics|proxy) listener on (https?://[^ ,"]+)')


class ExporterProcess:
    """An exporter subprocess on loopback ports it picks itself (``:0``), read from its log."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], cwd: Path = ROOT) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.urls: dict[str, str] = {}
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                if match := LISTENER.search(line):
                    self.urls[match.group(1)] = match.group(2)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_listeners(self, *kinds: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not all(kind in self.urls for kind in kinds):
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"{self.argv} exited {self.proc.returncode}:\n{self.log}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.argv}: no listener in {timeout}s:\n{self.log}")
                self._changed.wait(left)

    @property
    def web_url(self) -> str:
        return self.urls["metrics"]

    @property
    def proxy_url(self) -> str:
        return self.urls["proxy"]

    def wait_ready(self, timeout: float = 15) -> None:
        self.wait_for_listeners("metrics", timeout=timeout)
        wait_for(lambda: _status(f"{self.web_url}/-/ready") == 200, timeout, f"{self.argv} ready")

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        response = httpx.get(f"{self.web_url}/metrics", headers={"Accept": "text/plain"}, timeout=5)
        response.raise_for_status()
        return parse_samples(response.text)

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------
# A small Dockerfile reader (the instructions this project's Dockerfile uses)


@dataclass
class Instruction:
    keyword: str
    args: str
    flags: dict[str, str] = field(default_factory=dict)

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction, None for the shell form."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self.args
            return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


def _logical_lines(text: str) -> Iterator[str]:
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and current):
            continue  # comments (also inside continuations) and blank continuation lines
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if current.strip():
            yield current.strip()
        current = ""
    assert not current.strip(), "Dockerfile ends inside a line continuation"


def _substitute(text: str, env: Mapping[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in env, f"Dockerfile uses ${name}, which is not defined"
        return env[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, text)


def parse_dockerfile(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        flags: dict[str, str] = {}
        while keyword in ("COPY", "ADD", "RUN", "FROM") and rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, val = flag[2:].partition("=")
            flags[name] = val
            rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = default
            continue
        if keyword == "FROM":
            words = _substitute(rest, global_args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name, []))
            continue
        assert stages, f"{keyword} before FROM"
        stages[-1].instructions.append(Instruction(keyword, rest, flags))
    return stages


def _env_pairs(args: str) -> list[tuple[str, str]]:
    pairs = []
    for token in shlex.split(args):
        name, sep, value = token.partition("=")
        assert sep, f"ENV {args!r}: use the KEY=value form"
        pairs.append((name, value))
    return pairs


# ----------------------------------------------------------------------------------------------
# .dockerignore, with the semantics of Docker's pattern matcher (last match wins, a pattern
# that matches a parent directory matches everything under it, ! re-includes)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3  # any number of directories, none included
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            out += "[" + ("^" + body[1:] if body.startswith(("^", "!")) else body) + "]"
            i = end + 1
        else:
            char = pattern[i]
            out += "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char)
            i += 1
    return re.compile(f"^{out}$")


def dockerignore(path: Path) -> list[tuple[bool, re.Pattern[str], str]]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = str(PurePosixPath(line.lstrip("!").strip()))
        rules.append((negate, _pattern_regex(pattern.lstrip("/")), pattern))
    return rules


def is_ignored(rel: str, rules: list[tuple[bool, re.Pattern[str], str]]) -> bool:
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, regex, _ in rules:
        if any(regex.match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def build_context(root: Path) -> set[str]:
    """The files ``docker build`` would send, as relative POSIX paths."""
    rules = dockerignore(root / ".dockerignore")
    negations = [pattern for negate, _, pattern in rules if negate]
    files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        # Prune excluded directories that no ! pattern could re-include a file of.
        dirnames[:] = [
            d
            for d in dirnames
            if not is_ignored(rel_dir + d, rules)
            or any(p.startswith(rel_dir + d + "/") or "*" in p.split("/")[0] for p in negations)
        ]
        files.update(rel_dir + f for f in filenames if not is_ignored(rel_dir + f, rules))
    return files


# ----------------------------------------------------------------------------------------------
# The Dockerfile, replayed under a temporary root


@dataclass
class InstalledImage:
    """What the image holds, laid out under ``rootfs`` (image path /x is rootfs/x)."""

    rootfs: Path
    env: dict[str, str]  # the runtime stage's environment, paths mapped under rootfs
    entrypoint: list[str]
    healthcheck: list[str]
    workdir: Path  # the runtime WORKDIR under rootfs: where the default data/ store goes


def _stages() -> tuple[Stage, Stage]:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) == 2, "expected a build stage and a runtime stage"
    return stages[0], stages[1]


def _host_env(rootfs: Path) -> dict[str, str]:
    """The base image's environment, stood in for by this machine's Python 3.11."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env.pop("DEEPSEEK_API_KEY", None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    env["HOME"] = str(rootfs / "root")
    return env


def _apply_env(instruction: Instruction, env: dict[str, str], rootfs: Path) -> None:
    for name, value in _env_pairs(instruction.args):
        if value.startswith("/"):
            value = str(rootfs) + value  # an image path: under the temporary root
        env[name] = _substitute(value, env)


def _copy(src: Path, dest: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dest, dirs_exist_ok=True, symlinks=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest)


def replay_dockerfile(rootfs: Path) -> InstalledImage:
    build, runtime = _stages()
    context = build_context(ROOT)

    rootfs.mkdir(parents=True, exist_ok=True)
    env = _host_env(rootfs)
    workdir = rootfs
    for step in build.instructions:
        if step.keyword == "ENV":
            _apply_env(step, env, rootfs)
        elif step.keyword == "WORKDIR":
            assert step.args.startswith("/"), "WORKDIR must be absolute"
            workdir = rootfs / step.args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            assert "from" not in step.flags, "the build stage copies from the context only"
            *sources, dest = shlex.split(step.args)
            target = rootfs / dest.lstrip("/") if dest.startswith("/") else workdir / dest
            into_dir = dest.endswith("/") or len(sources) > 1
            for source in (s.rstrip("/") for s in sources):
                if source in context:  # a file
                    _copy(ROOT / source, target / Path(source).name if into_dir else target)
                    continue
                inside = sorted(f for f in context if f.startswith(source + "/"))
                assert inside, f"COPY {source}: not in the build context (see .dockerignore)"
                for rel in inside:  # a directory: its contents
                    _copy(ROOT / rel, target / rel[len(source) + 1 :])
        elif step.keyword == "RUN":
            assert step.exec_form() is None, "RUN in shell form expected"
            # Image paths must come from ENV (mapped above), never be written out literally.
            literal = re.findall(r"(?<![\w$}/.])/(?:opt|usr|src|app|etc|var)\b", step.args)
            assert not literal, f"RUN {step.args!r}: write image paths through ENV variables"
            done = subprocess.run(
                ["/bin/sh", "-c", step.args],
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, f"RUN {step.args}\n{done.stdout}\n{done.stderr}"
        elif step.keyword in ("ARG", "LABEL"):
            continue
        else:
            raise AssertionError(f"the build stage has {step.keyword}: teach this test about it")

    runtime_env = _host_env(rootfs)
    runtime_workdir = rootfs
    for step in runtime.instructions:
        if step.keyword == "ENV":
            _apply_env(step, runtime_env, rootfs)
        elif step.keyword == "WORKDIR":
            runtime_workdir = rootfs / step.args.lstrip("/")
            runtime_workdir.mkdir(parents=True, exist_ok=True)
        elif step.keyword == "COPY":
            assert step.flags.get("from") == build.name, "the runtime copies from the build stage"
            src, dest = shlex.split(step.args)
            assert src == dest, "the venv must keep its path (its scripts name their interpreter)"
            assert (rootfs / src.lstrip("/")).exists(), f"COPY --from: {src} was not built"
        elif step.keyword == "RUN":
            # Creating the system user and its directory needs root: checked by shape, not run.
            for command in re.split(r"&&", step.args):
                assert command.split()[0] in ("groupadd", "useradd", "mkdir", "chown"), (
                    f"RUN {step.args!r}"
                )
    entrypoint = runtime.last("ENTRYPOINT").exec_form()
    assert entrypoint, "ENTRYPOINT must be in exec form (signals reach the exporter)"
    healthcheck = _healthcheck_argv(runtime)
    return InstalledImage(rootfs, runtime_env, entrypoint, healthcheck, runtime_workdir)


def _healthcheck_argv(runtime: Stage) -> list[str]:
    _, sep, command = runtime.last("HEALTHCHECK").args.partition("CMD ")
    assert sep and command.startswith("["), "HEALTHCHECK CMD in exec form"
    argv = json.loads(command)
    assert isinstance(argv, list) and argv, command
    return argv


def _which(name: str, env: Mapping[str, str]) -> str:
    found = shutil.which(name, path=env["PATH"])
    assert found, f"{name} not on the image's PATH"
    return found


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> InstalledImage:
    return replay_dockerfile(tmp_path_factory.mktemp("image") / "rootfs")


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    with running_simulator() as simulator:
        yield simulator


def _run_healthcheck(image: InstalledImage, url: str) -> subprocess.CompletedProcess[str]:
    argv = [_which(image.healthcheck[0], image.env), *image.healthcheck[1:]]
    assert Path(argv[0]).is_relative_to(image.rootfs), "the image's own python"
    env = {**image.env, "DEEPSEEK_EXPORTER_HEALTHCHECK_URL": url}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=10)


def _loopback_flags() -> list[str]:
    return ["--web.listen-address=127.0.0.1:0", "--proxy.listen-address=127.0.0.1:0"]


# ----------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def test_dockerfile_shape() -> None:
    build, runtime = _stages()
    assert build.base == runtime.base == "python:3.11-slim", "same slim base for both stages"
    assert build.name == "build"
    user = runtime.last("USER").args
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: a numeric non-root uid (runAsNonRoot)"
    exposed = [int(p.split("/")[0]) for i in runtime.all("EXPOSE") for p in i.args.split()]
    assert exposed == [METRICS_PORT, PROXY_PORT]
    entrypoint = runtime.last("ENTRYPOINT").exec_form()
    scripts = _pyproject()["project"]["scripts"]
    assert entrypoint == ["deepseek-exporter"] and "deepseek-exporter" in scripts
    health = runtime.last("HEALTHCHECK").args
    assert re.search(r"--interval=\d+s", health) and re.search(r"--timeout=\d+s", health)
    argv = _healthcheck_argv(runtime)
    assert argv[0] == "python", "no curl or wget in the slim image: Python asks /-/healthy"
    default_url = f"http://127.0.0.1:{METRICS_PORT}/-/healthy"
    assert default_url in argv[-1]
    env = dict(p for i in runtime.all("ENV") for p in _env_pairs(i.args))
    assert env["DEEPSEEK_EXPORTER_HEALTHCHECK_URL"] == default_url
    assert env["PATH"].startswith("$VIRTUAL_ENV/bin:")
    # The history store (default data/ in the working directory) is the one thing written: the
    # working directory is a volume the image's user owns, the rest can be read-only.
    workdir = runtime.last("WORKDIR").args
    assert json.loads(runtime.last("VOLUME").args) == [workdir]
    setup = " ".join(i.args for i in runtime.all("RUN"))
    assert f"mkdir -p {workdir}" in setup and f"chown {user} {workdir}" in setup


def _pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dockerignore_keeps_the_context_to_the_package() -> None:
    context = build_context(ROOT)
    # exporter/data/runbooks links to docs/runbooks: the Dockerfile copies those files there.
    runbooks = ROOT / "exporter" / "data" / "runbooks"
    assert runbooks.is_symlink() and "exporter/data/runbooks" not in context
    package = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "exporter").rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix != ".pyc"
        and not p.is_relative_to(runbooks)
    }
    served = {f"docs/runbooks/{p.name}" for p in (ROOT / "docs" / "runbooks").glob("*.md")}
    assert {"pyproject.toml", "README.md"} | package | served <= context
    assert any(f.startswith("exporter/data/") for f in context), "package data is in the context"
    leaked = sorted(
        f
        for f in context
        if (
            f.startswith((".git/", ".venv/", "tests/", "docs/", "deploy/", "bench/"))
            and not f.startswith("docs/runbooks/")
        )
        or "__pycache__" in f
        or f.endswith(".pyc")
    )
    assert not leaked, f"in the build context, should not be: {leaked[:5]}"
    # A local configuration file (which may hold a key) never reaches an image.
    rules = dockerignore(ROOT / ".dockerignore")
    assert is_ignored("deepseek.yml", rules) and is_ignored("secrets/prod.key", rules)


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    rules = [
        (False, _pattern_regex("*"), "*"),
        (True, _pattern_regex("exporter"), "exporter"),
        (False, _pattern_regex("**/__pycache__"), "**/__pycache__"),
    ]
    assert is_ignored("tests/test_x.py", rules)
    assert not is_ignored("exporter/data/prices.yaml", rules)
    assert is_ignored("exporter/__pycache__/app.cpython-311.pyc", rules)
    assert is_ignored("__pycache__/x.pyc", rules)
    pyc = [(False, _pattern_regex("**/*.py[cod]"), "**/*.py[cod]")]
    assert is_ignored("exporter/app.pyc", pyc) and is_ignored("app.pyo", pyc)
    assert not is_ignored("exporter/app.py", pyc)


@pytest.mark.e2e
def test_image_installs_and_entrypoint_serves_with_key_from_environment(
    image: InstalledImage, sim: Simulator
) -> None:
    entrypoint = [_which(image.entrypoint[0], image.env), *image.entrypoint[1:]]
    assert Path(entrypoint[0]).is_relative_to(image.rootfs), "the console script of the venv"
    env = {**image.env, "DEEPSEEK_API_KEY": PROD_KEY}
    exporter = ExporterProcess(
        [*entrypoint, f"--deepseek.base-url={sim.base_url}", *_loopback_flags()],
        env,
        cwd=image.workdir,
    )
    try:
        exporter.wait_ready()
        assert (image.workdir / "data" / "history.db").is_file(), "the history is in the volume"
        assert _status(f"{exporter.web_url}/-/healthy") == 200
        samples = exporter.samples()
        assert samples[("deepseek_up", frozenset({("account", "default")}))] == 1
        build_info = ("deepseek_exporter_build_info", frozenset({("version", __version__)}))
        assert samples[build_info] == 1
        # The runbooks travel inside the package: the alerts' runbook links resolve.
        assert _status(f"{exporter.web_url}/runbooks/DeepSeekInsufficientBalance") == 200
        check = _run_healthcheck(image, f"{exporter.web_url}/-/healthy")
        assert check.returncode == 0, check.stderr
    finally:
        assert exporter.stop() == 0, exporter.log
    check = _run_healthcheck(image, f"{exporter.web_url}/-/healthy")
    assert check.returncode != 0, "HEALTHCHECK must fail when nothing answers"


@pytest.mark.e2e
def test_image_entrypoint_with_mounted_config_and_key_file(
    image: InstalledImage, sim: Simulator, tmp_path: Path
) -> None:
    # As `docker run -v ./deepseek.yml:/etc/deepseek-exporter/deepseek.yml -v ./keys:...`.
    etc = image.rootfs / "etc" / "deepseek-exporter"
    (etc / "keys").mkdir(parents=True, exist_ok=True)
    (etc / "keys" / "prod").write_text(PROD_KEY + "\n")
    (etc / "deepseek.yml").write_text(
        f"deepseek:\n  base_url: {sim.base_url}\n"
        "accounts:\n  - name: prod\n    api_key_file: keys/prod\n"
    )
    entrypoint = [_which(image.entrypoint[0], image.env), *image.entrypoint[1:]]
    exporter = ExporterProcess(
        [
            *entrypoint,
            f"--config.file={etc / 'deepseek.yml'}",
            *_loopback_flags(),
            "--storage.path=",
        ],
        image.env,
        cwd=image.workdir,
    )
    try:
        exporter.wait_ready()
        samples = exporter.samples()
        assert samples[("deepseek_up", frozenset({("account", "prod")}))] == 1
        assert PROD_KEY not in exporter.log
    finally:
        assert exporter.stop() == 0, exporter.log


@pytest.mark.e2e
def test_compose_wrapper_runs_demo_without_key_and_real_mode_with_one(
    image: InstalledImage, sim: Simulator
) -> None:
    demo = ExporterProcess(
        ["/bin/sh", str(WRAPPER), *_loopback_flags()], image.env, cwd=image.workdir
    )
    try:
        demo.wait_ready()
        accounts = {
            dict(labels).get("account")
            for (name, labels) in demo.samples()
            if name == "deepseek_account_available"
        }
        assert accounts == {"demo-steady", "demo-draining"}, demo.log
        assert "starting the built-in demo" in demo.log
    finally:
        assert demo.stop() == 0, demo.log
    # A command goes through as typed, key or not: the check, not the demo.
    check = subprocess.run(
        ["/bin/sh", str(WRAPPER), "balance"], env=image.env, capture_output=True, text=True
    )
    assert check.returncode == 2 and "no accounts configured" in check.stdout, check.stderr
    assert "demo" not in check.stderr

    env = {**image.env, "DEEPSEEK_API_KEY": PROD_KEY}
    real = ExporterProcess(
        [
            "/bin/sh",
            str(WRAPPER),
            f"--deepseek.base-url={sim.base_url}",
            *_loopback_flags(),
            f"--storage.path={image.workdir / 'compose-data'}",
        ],
        env,
        cwd=image.workdir,
    )
    try:
        real.wait_ready()
        accounts = {
            dict(labels).get("account")
            for (name, labels) in real.samples()
            if name == "deepseek_account_available"
        }
        assert accounts == {"default"}, real.log
    finally:
        assert real.stop() == 0, real.log


# ----------------------------------------------------------------------------------------------
# deploy/compose


def _compose() -> dict[str, Any]:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(compose, dict)
    return compose


@dataclass
class Mount:
    source: str
    target: str
    bind: bool


def _mounts(service: Mapping[str, Any]) -> list[Mount]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target, *_ = volume.split(":")
            bind = source.startswith((".", "/", "~"))
        else:
            source, target = volume.get("source", ""), volume["target"]
            bind = volume.get("type") == "bind"
        mounts.append(Mount(source, target, bind))
    return mounts


def _host_path(service: Mapping[str, Any], container_path: str) -> Path | None:
    """Where a path inside a service's container comes from on this machine (bind mounts)."""
    best: Mount | None = None
    for mount in _mounts(service):
        inside = container_path == mount.target or container_path.startswith(
            mount.target.rstrip("/") + "/"
        )
        if mount.bind and inside and (best is None or len(mount.target) > len(best.target)):
            best = mount
    if best is None:
        return None
    rest = container_path[len(best.target) :].lstrip("/")
    return (COMPOSE_DIR / best.source / rest).resolve()


def _flag(command: Sequence[str], name: str) -> str:
    for arg in command:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"no {name} in {command}")


def test_compose_parses_and_every_mounted_file_exists() -> None:
    compose = _compose()
    assert set(compose) <= {"name", "services", "volumes", "networks", "configs", "secrets"}
    services = compose["services"]
    assert set(services) == {"exporter", "prometheus", "alertmanager", "grafana"}
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for mount in _mounts(service):
            if mount.bind:
                source = COMPOSE_DIR / mount.source
                assert source.exists(), f"{name}: mounts {mount.source}, which does not exist"
            else:
                assert mount.source in declared, f"{name}: volume {mount.source} is not declared"
        for dep in service.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"
    build = services["exporter"]["build"]
    assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    ports = {p.split(":")[-1] for p in services["exporter"]["ports"]}
    assert ports == {str(METRICS_PORT), str(PROXY_PORT)}


def test_compose_exporter_runs_the_wrapper_in_demo_mode_unless_a_key_is_set() -> None:
    exporter = _compose()["services"]["exporter"]
    script = exporter["entrypoint"][-1]
    assert _host_path(exporter, script) == WRAPPER.resolve()
    # Empty unless the user exports DEEPSEEK_API_KEY: then the wrapper starts the demo.
    assert exporter["environment"]["DEEPSEEK_API_KEY"] == "${DEEPSEEK_API_KEY:-}"
    assert exporter.get("read_only") is True
    # Read-only, but the history (data/ in the image's working directory) is on a named volume.
    _, runtime = _stages()
    workdir = runtime.last("WORKDIR").args
    assert [m for m in _mounts(exporter) if m.target == workdir and not m.bind]


@pytest.mark.e2e
def test_compose_prometheus_loads_the_rules_and_scrapes_the_exporter(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    services = _compose()["services"]
    prometheus = services["prometheus"]
    config_path = _flag(prometheus["command"], "--config.file")
    host_config = _host_path(prometheus, config_path)
    assert host_config is not None and host_config.exists(), f"{config_path} is not mounted"
    config = yaml.safe_load(host_config.read_text())

    rule_files = config["rule_files"]
    hosts = [_host_path(prometheus, f) for f in rule_files]
    assert RULES_FILE.resolve() in hosts, "alerts/deepseek-rules.yml is mounted and loaded"
    # promtool with the container's paths pointed at the mounted files.
    mirrored = dict(config, rule_files=[str(h) for h in hosts if h is not None])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(mirrored))
    done = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    # Any job name will do (the rules select none); one job scrapes the exporter.
    jobs = {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in config["scrape_configs"]
    }
    assert [t for targets in jobs.values() for t in targets if t.startswith("exporter:")] == [
        f"exporter:{METRICS_PORT}"
    ]
    managers = [
        t
        for am in config["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert [m.split(":")[0] for m in managers] == ["alertmanager"]


@pytest.mark.e2e
def test_compose_alertmanager_config_is_the_example_and_valid() -> None:
    amtool = require_binary("amtool")
    alertmanager = _compose()["services"]["alertmanager"]
    host = _host_path(alertmanager, _flag(alertmanager["command"], "--config.file"))
    assert host == (ROOT / "alerts" / "alertmanager.yml").resolve()
    done = subprocess.run(
        [amtool, "check-config", str(host)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_grafana_provisioning_points_at_the_stack() -> None:
    services = _compose()["services"]
    grafana = services["grafana"]
    provisioning = _host_path(grafana, "/etc/grafana/provisioning")
    assert provisioning == (ROOT / "grafana" / "provisioning").resolve()
    assert provisioning.is_dir(), "grafana/provisioning is missing"

    datasources = [
        ds
        for file in sorted((provisioning / "datasources").glob("*.y*ml"))
        for ds in (yaml.safe_load(file.read_text()) or {}).get("datasources", [])
        if ds.get("type") == "prometheus"
    ]
    assert datasources, "no Prometheus datasource is provisioned"
    for ds in datasources:
        url = urlsplit(ds["url"])
        assert url.hostname in services and url.port == 9090, (
            f"datasource {ds.get('name')} points at {ds['url']}: in the compose stack "
            "Prometheus is http://prometheus:9090"
        )

    providers = [
        p
        for file in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for p in (yaml.safe_load(file.read_text()) or {}).get("providers", [])
    ]
    assert providers, "no dashboard provider is provisioned"
    for provider in providers:
        path = provider["options"]["path"]
        host = _host_path(grafana, path)
        assert host is not None and host.is_dir(), f"provider path {path} is not mounted"
        assert (host / "deepseek-overview.json").exists()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    home_host = _host_path(grafana, home)
    assert home_host is not None and home_host.is_file(), f"{home} is not mounted"


# ----------------------------------------------------------------------------------------------
# deploy/kubernetes


CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
K8S_VERSIONS = ("1.28.0", "latest")  # the oldest Kubernetes still widely run, and the newest


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    kubectl = require_binary("kubectl")
    done = subprocess.run(
        [kubectl, "kustomize", str(KUSTOMIZE_DIR)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _one(manifests: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def _validate_crd(doc: dict[str, Any]) -> None:
    """Required fields of the Prometheus Operator CRDs (no schema for them ships offline)."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert set(spec) <= {
            "jobLabel",
            "selector",
            "endpoints",
            "namespaceSelector",
            "targetLabels",
            "podTargetLabels",
            "sampleLimit",
        }, sorted(spec)
        assert isinstance(spec["selector"].get("matchLabels"), dict)
        assert spec["endpoints"], "a ServiceMonitor needs endpoints"
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {
                "port",
                "targetPort",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "relabelings",
                "metricRelabelings",
                "tlsConfig",
                "basicAuth",
            }
            assert "port" in endpoint or "targetPort" in endpoint
            for key in ("interval", "scrapeTimeout"):
                if key in endpoint:
                    assert re.fullmatch(r"(\d+(ms|s|m|h))+", endpoint[key]), endpoint[key]
    else:
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert isinstance(group["name"], str) and group["rules"], group
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), rule
                assert isinstance(rule["expr"], str | int | float), rule
                assert set(rule) <= {
                    "alert",
                    "record",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                }, rule


def test_kustomize_builds_and_validates_against_kubernetes_schemas(
    manifests: list[dict[str, Any]],
) -> None:
    import kubernetes_validate

    latest = kubernetes_validate.utils.latest_version()
    kinds = sorted(m["kind"] for m in manifests)
    assert kinds == [
        "ConfigMap",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "Service",
        "ServiceMonitor",
        "StatefulSet",
    ]
    for doc in manifests:
        if doc["kind"] in CRD_KINDS:
            _validate_crd(doc)
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(
                doc, latest if version == "latest" else version, strict=True
            )
    # The validation is not vacuous: a misspelt field is refused.
    broken = json.loads(json.dumps(_one(manifests, "StatefulSet")))
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesytem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.28.0", strict=True)


def test_statefulset_is_hardened_and_probed(manifests: list[dict[str, Any]]) -> None:
    deployment = _one(manifests, "StatefulSet")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    _, runtime = _stages()
    uid = runtime.last("USER").args.split(":")[0]
    assert str(pod["securityContext"]["runAsUser"]) == uid, "the image's uid"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": METRICS_PORT, "proxy": PROXY_PORT}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    # Longer than the exporter's own grace period, so in-flight streams can finish.
    shutdown = _flag(container["args"], "--web.shutdown-timeout")
    assert pod["terminationGracePeriodSeconds"] > int(shutdown.rstrip("s"))
    image, _, tag = container["image"].rpartition(":")
    assert image.endswith("deepseek-exporter") and tag == __version__, container["image"]

    # Config from the generated ConfigMap, keys from a Secret that is referenced, not shipped.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_file = _flag(container["args"], "--config.file")
    config_volume = volumes[mounts[str(PurePosixPath(config_file).parent)]]
    configmap = _one(manifests, "ConfigMap", config_volume["configMap"]["name"])
    secrets = [v["secret"]["secretName"] for v in volumes.values() if "secret" in v]
    assert secrets == ["deepseek-exporter-keys"]
    assert not any(m["kind"] == "Secret" for m in manifests), "keys never ship in the base"
    assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]]
    assert configmap["data"][PurePosixPath(config_file).name]
    # The balance history on a volume of its own per replica, which outlives pods and rollouts.
    storage = PurePosixPath(_flag(container["args"], "--storage.path"))
    (claim,) = spec["volumeClaimTemplates"]
    assert mounts[str(storage.parent)] == claim["metadata"]["name"]
    assert claim["metadata"]["name"] not in volumes, "a claim per replica, not a shared volume"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_kubernetes_config_passes_the_exporters_config_check(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    deployment = _one(manifests, "StatefulSet")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    keys_dir = mounts["keys"]
    configmap = next(m for m in manifests if m["kind"] == "ConfigMap")
    ((name, text),) = configmap["data"].items()
    keys = set(re.findall(re.escape(keys_dir) + r"/([\w.-]+)", text))
    assert keys, "the accounts read their keys from the mounted Secret"
    (tmp_path / "keys").mkdir()
    for key in keys:
        (tmp_path / "keys" / key).write_text("sk-test-" + key + "\n")
    config_path = tmp_path / name
    config_path.write_text(text.replace(keys_dir, str(tmp_path / "keys")))
    config, _ = load_all(config_path, environ={})
    assert config.accounts and config.balance.poll_interval > 0
    assert config.web.listen_address.endswith(f":{METRICS_PORT}")
    assert config.proxy.listen_address.endswith(f":{PROXY_PORT}")


def test_services_and_servicemonitor_fit_together(manifests: list[dict[str, Any]]) -> None:
    deployment = _one(manifests, "StatefulSet")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container_ports = {
        p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    services = [m for m in manifests if m["kind"] == "Service"]
    for service in services:
        selector = service["spec"]["selector"]
        name = service["metadata"]["name"]
        assert selector.items() <= pod_labels.items(), f"Service {name} selects no pod"
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports
    by_port = {p["name"]: s for s in services for p in s["spec"]["ports"]}
    assert by_port["metrics"]["spec"]["ports"][0]["port"] == METRICS_PORT
    assert by_port["proxy"]["spec"]["ports"][0]["port"] == PROXY_PORT

    monitor = _one(manifests, "ServiceMonitor")["spec"]
    selected = [
        s
        for s in services
        if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert selected == [by_port["metrics"]], "the ServiceMonitor scrapes the metrics Service only"
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]
    # The Operator names the job after the Service's jobLabel label; the rules and the
    # dashboard select no job, so they work under this name or any other.
    assert selected[0]["metadata"]["labels"][monitor["jobLabel"]] == JOB
    assert "job=" not in "".join(
        r["expr"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"] for r in g["rules"]
    )

    pdb = _one(manifests, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["minAvailable"] < deployment["spec"]["replicas"]


def test_prometheusrule_is_in_sync_with_the_rule_file(manifests: list[dict[str, Any]]) -> None:
    done = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rules = yaml.safe_load(RULES_FILE.read_text())
    rule = _one(manifests, "PrometheusRule")
    assert rule["spec"]["groups"] == rules["groups"], "run scripts/gen-prometheusrule"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert {"DeepSeekInsufficientBalance", "DeepSeekExporterDown"} <= alerts


@pytest.mark.e2e
def test_prometheusrule_rules_pass_promtool(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    promtool = require_binary("promtool")
    spec = _one(manifests, "PrometheusRule")["spec"]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


OVERLAY_DIR = ROOT / "tests" / "testdata" / "deploy" / "overlay"


def _matches(selector: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
    return selector.items() <= pod_labels.items()


def test_overlay_example_with_proxy_only_component_builds_and_fits(tmp_path: Path) -> None:
    import kubernetes_validate

    kubectl = require_binary("kubectl")
    done = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY_DIR)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    built = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    for doc in built:
        assert doc["metadata"]["namespace"] == "monitoring"
        if doc["kind"] in CRD_KINDS:
            _validate_crd(doc)
            # The label kube-prometheus-stack selects rules and monitors by.
            assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        else:
            kubernetes_validate.validate(doc, "1.28.0", strict=True)

    full = _one(built, "StatefulSet", "deepseek-exporter")
    proxy_only = _one(built, "Deployment", "deepseek-exporter-proxy-only")
    deployments = (full, proxy_only)
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in deployments]
    # The two Deployments never claim each other's pods ...
    assert not _matches(full["spec"]["selector"]["matchLabels"], pods[1])
    assert not _matches(proxy_only["spec"]["selector"]["matchLabels"], pods[0])
    # ... and both serve behind the Services, scraped by the ServiceMonitor.
    for service in (m for m in built if m["kind"] == "Service"):
        assert all(_matches(service["spec"]["selector"], labels) for labels in pods)
    pdb = _one(built, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert _matches(pdb, pods[0]) and not _matches(pdb, pods[1])

    # The same pod but for its role, its configuration and the history it keeps (proxy-only
    # replicas poll nothing and store nothing): the copy cannot drift.
    def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
        spec = json.loads(json.dumps(deployment["spec"]["template"]["spec"]))
        spec["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"].pop(
            "deepseek-exporter/role"
        )
        for volume in spec["volumes"]:
            if "configMap" in volume:
                volume["configMap"]["name"] = "<config>"
        (container,) = spec["containers"]
        container["args"] = [a for a in container["args"] if not a.startswith("--storage.")]
        container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] != "history"]
        return spec

    assert pod_spec(full) == pod_spec(proxy_only)
    (container,) = proxy_only["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com/deepseek-exporter:0.1.0"

    # Each Deployment gets its own configuration; both pass the exporter's config check.
    keys_dir = "/etc/deepseek-exporter/keys"
    (tmp_path / "keys").mkdir()
    configs = {}
    for deployment in deployments:
        volume = next(
            v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v
        )
        configmap = _one(built, "ConfigMap", volume["configMap"]["name"])
        text = configmap["data"]["deepseek.yml"]
        for key in re.findall(re.escape(keys_dir) + r"/([\w.-]+)", text):
            (tmp_path / "keys" / key).write_text("sk-test-" + key)
        path = tmp_path / f"{deployment['metadata']['name']}.yml"
        path.write_text(text.replace(keys_dir, str(tmp_path / "keys")))
        configs[deployment["metadata"]["name"]] = load_all(path, environ={})[0]
    polling, proxying = configs["deepseek-exporter"], configs["deepseek-exporter-proxy-only"]
    assert polling.balance.poll_interval > 0 and proxying.balance.poll_interval == 0
    assert [a.name for a in polling.accounts] == [a.name for a in proxying.accounts]
    assert all(a.currency for a in proxying.accounts), "proxy-only replicas need a currency"


def test_proxy_only_example_config_passes_the_config_check(tmp_path: Path) -> None:
    keys_dir = "/etc/deepseek-exporter/keys"
    (tmp_path / "keys").mkdir()
    configs = []
    for example in (
        KUSTOMIZE_DIR / "deepseek.yml",
        KUSTOMIZE_DIR / "proxy-only" / "deepseek-proxy-only.yml",
    ):
        text = example.read_text()
        for key in re.findall(re.escape(keys_dir) + r"/([\w.-]+)", text):
            (tmp_path / "keys" / key).write_text("sk-test-" + key)
        path = tmp_path / example.name
        path.write_text(text.replace(keys_dir, str(tmp_path / "keys")))
        configs.append(load_all(path, environ={})[0])
    base, proxy_only = configs
    assert proxy_only.balance.poll_interval == 0
    assert all(a.currency for a in proxy_only.accounts)
    assert [a.name for a in proxy_only.accounts] == [a.name for a in base.accounts]


def _generator() -> Any:
    loader = importlib.machinery.SourceFileLoader("gen_prometheusrule", str(GENERATOR))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def test_generator_output_follows_the_rule_file() -> None:
    generator = _generator()
    rule = {"record": "a:b:c", "expr": "sum by (x) (\n  y\n)\n"}
    spec = {"groups": [{"name": "g", "rules": [rule]}]}
    text = generator.render(yaml.safe_dump(spec))
    assert text.startswith("# GENERATED by scripts/gen-prometheusrule")
    assert yaml.safe_load(text)["spec"] == spec
    assert "expr: |" in text, "multi-line PromQL stays readable"
    # Any change of the rule file changes the output, so --check (and the test above) fail.
    current = (KUSTOMIZE_DIR / "prometheusrule.yaml").read_text()
    assert generator.render(RULES_FILE.read_text()) == current
    assert generator.render(RULES_FILE.read_text().replace("for: 5m", "for: 6m")) != text
