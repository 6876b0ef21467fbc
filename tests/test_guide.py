"""The guide for the stack you already run: the README's snippets are the shipped example files,
each checked by the tool that will read it (promtool, amtool, the exporter's --config.check);
the runbooks are served by the exporter at the address every alert links to, and their commands
name the paths of the shipped container and manifests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import bcrypt
import httpx
import pytest
import yaml

from exporter.web import runbooks
from tests.conftest import BackgroundLoop, require_binary
from tests.harness import exporter_config, running_exporter, running_simulator, wait_until
from tests.test_cli import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RULES = ROOT / "alerts" / "deepseek-rules.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
README = (ROOT / "README.md").read_text()


def alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return sorted({rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule})


# ---- the README shows the shipped files -------------------------------------------------------


def readme_blocks() -> dict[str, str]:
    """README code blocks whose first line names an example file: path -> block."""
    blocks = re.findall(r"```(?:yaml|yml)\n(.*?)```", README, flags=re.S)
    return {
        match[1]: block for block in blocks if (match := re.match(r"# (examples/\S+?):", block))
    }


def test_readme_snippets_are_the_example_files() -> None:
    shown = readme_blocks()
    assert set(shown) >= {
        "examples/deepseek.yml",
        "examples/prometheus/prometheus.yml",
        "examples/prometheus/prometheus-tls.yml",
        "examples/alertmanager/slack.yml",
        "examples/alertmanager/pagerduty.yml",
        "examples/alertmanager/email.yml",
    }
    for path, block in shown.items():
        assert block == (ROOT / path).read_text(), f"README shows another {path}: copy it again"
    assert "[grafana/README.md](grafana/README.md)" in README


@pytest.mark.parametrize("example", ["slack.yml", "pagerduty.yml", "email.yml"])
def test_alertmanager_receivers_pass_amtool(example: str) -> None:
    amtool = require_binary("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(EXAMPLES / "alertmanager" / example)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("example", ["prometheus.yml", "prometheus-tls.yml"])
def test_scrape_configs_pass_promtool(example: str, tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    # As the README says: the rule file copied next to it, and the TLS files in place.
    shutil.copy(EXAMPLES / "prometheus" / example, tmp_path / example)
    shutil.copy(RULES, tmp_path / "deepseek-rules.yml")
    (tmp_path / "deepseek-exporter-ca.crt").write_text("")
    (tmp_path / "deepseek-exporter.password").write_text("secret\n")
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / example)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout + result.stderr


def test_starter_config_passes_config_check_as_shipped() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
    check = [sys.executable, "-m", "exporter", "--config.file", str(EXAMPLES / "deepseek.yml")]
    result = subprocess.run(
        [*check, "--config.check"],
        env={**env, "DEEPSEEK_API_KEY": "sk-from-the-environment"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "config OK: 1 account(s)"
    # Without the key, one line says which variable is missing.
    result = subprocess.run([*check, "--config.check"], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "config error: accounts[0].api_key_env: environment variable DEEPSEEK_API_KEY is not "
        "set or empty"
    )


# ---- runbooks ---------------------------------------------------------------------------------


def test_every_alert_has_a_runbook_the_exporter_serves(background_loop: BackgroundLoop) -> None:
    assert runbooks.names() == alert_names()
    with (
        running_simulator() as sim,
        running_exporter(exporter_config(sim.base_url), background_loop) as running,
    ):
        base = running.web_url
        index = httpx.get(f"{base}/runbooks/")
        assert index.status_code == 200
        for name in alert_names():
            assert f'href="{name}"' in index.text  # relative: works behind any path prefix
            page = httpx.get(f"{base}/runbooks/{name}")
            assert page.status_code == 200, name
            assert page.headers["content-type"].startswith("text/html")
            assert f"<h1>{name}</h1>" in page.text
            for part in ("Meaning", "Impact", "Diagnosis", "Mitigation"):
                assert f"<h2>{part}</h2>" in page.text, (name, part)
            # Self-contained: no script, nothing loaded from elsewhere.
            assert "<script" not in page.text
            assert not re.search(r'\ssrc="', page.text)
            assert "Content-Security-Policy" in page.headers
        assert httpx.get(f"{base}/runbooks/DeepSeekBalanceLow.md").status_code == 200
        assert httpx.get(f"{base}/runbooks", follow_redirects=True).url.path == "/runbooks/"
        for missing in ("Nope", "..%2Fconfig", "DeepSeek%0aX"):
            assert httpx.get(f"{base}/runbooks/{missing}").status_code == 404


def test_runbook_markdown_html_is_escaped(tmp_path: Path) -> None:
    page = runbooks._render("X", "# X\n\n<script>alert(1)</script> [a](DeepSeekBalanceLow.md)\n")
    assert "<script>alert" not in page and "&lt;script&gt;" in page
    assert 'href="DeepSeekBalanceLow"' in page


def test_runbook_links_resolve_under_any_job_name_and_with_replicas() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "test", "rules", "runbook-links.test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_runbook_commands_name_the_shipped_paths() -> None:
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "statefulset.yaml").read_text())
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    [kubernetes] = [a.split("=", 1)[1] for a in args if a.startswith("--config.file=")]
    container = re.search(r"--config\.file=(/\S+)", (ROOT / "deploy" / "README.md").read_text())[1]  # type: ignore[index]
    used = set()
    for page in RUNBOOKS.glob("*.md"):
        for path in re.findall(r"--config\.file=(/[^\s`]+)", page.read_text()):
            assert path in (kubernetes, container), f"{page.name}: {path} is not shipped"
            used.add(path)
    assert used == {kubernetes, container}
    for page in RUNBOOKS.glob("*.md"):
        for command in re.findall(r"kubectl exec (\S+)", page.read_text()):
            assert command == "statefulset/deepseek-exporter", page.name


def test_the_readme_configuration_reference_passes_config_check(tmp_path: Path) -> None:
    reference = README.split("### Configuration", 1)[1].split("```yaml\n", 1)[1].split("```")[0]
    config = tmp_path / "deepseek.yml"
    config.write_text(reference)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
    env |= {"DEEPSEEK_API_KEY_PROD": "sk-prod-from-env", "CHATBOT_TOKEN": "tok-chatbot"}
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config.file", str(config), "--config.check"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.e2e
def test_prometheus_scrapes_over_tls_with_basic_auth_as_the_guide_says(tmp_path: Path) -> None:
    """examples/prometheus/prometheus-tls.yml against an exporter with TLS and basic auth, in
    a real Prometheus: only the target, the certificate files and the interval are changed."""
    openssl, prometheus = require_binary("openssl"), require_binary("prometheus")
    name = "deepseek-exporter.example.com"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(tmp_path / "server.key"), "-out", str(tmp_path / "server.crt")],
        check=True, capture_output=True,
    )  # fmt: skip
    password = "scrape-password"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    (tmp_path / "web.yml").write_text(
        "tls_server_config: {cert_file: server.crt, key_file: server.key}\n"
        f"basic_auth_users: {{prometheus: '{hashed}'}}\n"
    )
    web_port, prom_port = free_port(), free_port()
    config = yaml.safe_load((EXAMPLES / "prometheus" / "prometheus-tls.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    del config["alerting"]
    job = config["scrape_configs"][0]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{web_port}"]}]
    shutil.copy(tmp_path / "server.crt", tmp_path / job["tls_config"]["ca_file"])
    (tmp_path / job["basic_auth"]["password_file"]).write_text(password + "\n")
    shutil.copy(RULES, tmp_path / "deepseek-rules.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPSEEK_")}
    exporter = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--demo", f"--web.listen-address=127.0.0.1:{web_port}",
         f"--proxy.listen-address=127.0.0.1:{free_port()}",
         f"--web.config.file={tmp_path / 'web.yml'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    server = subprocess.Popen(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def up() -> bool:
            try:
                reply = httpx.get(
                    f"http://127.0.0.1:{prom_port}/api/v1/query",
                    params={"query": 'up{job="deepseek-exporter"} == 1'},
                ).json()
            except (httpx.TransportError, ValueError):
                return False
            return bool(reply.get("data", {}).get("result"))

        wait_until(up, timeout=60)
        # It is the exporter's data, not just a handshake: a series it alone exports.
        reply = httpx.get(
            f"http://127.0.0.1:{prom_port}/api/v1/query",
            params={"query": "deepseek_exporter_build_info"},
        ).json()
        assert reply["data"]["result"], reply
        # And the exporter really asks for the password.
        anonymous = httpx.get(f"https://127.0.0.1:{web_port}/metrics", verify=False)
        assert anonymous.status_code == 401
    finally:
        for process in (server, exporter):
            process.terminate()
            process.wait(20)
