"""exporter.web.webconfig: every case of the file format, one fixture each, with its exact result.

Each file in tests/testdata/webconfig/ starts with what loading it must give:

- ``# error: <message>``: refused with exactly this one-line message;
- ``# ok``: accepted without a warning, or ``# warning: <message>`` lines: accepted with
  exactly these warnings; ``# expect <aspect>: <value>`` lines check what was read;
- ``# promtool: refuses|accepts``: ``promtool check web-config`` (2.42) agrees;
- ``# toolkit: <file>``: the exporter-toolkit fixture whose case it reproduces
  (tests/test_webconfig_toolkit.py checks that every one is covered, with the toolkit's outcome).

The fixtures are loaded from a temporary folder that also holds the certificates of
tests/pki.py under the names they use; ``{pem:NAME}`` in a fixture becomes that file's PEM,
``{file}`` and ``{dir}`` in a message the fixture's path and folder.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from exporter.web import goyaml
from exporter.web.certnames import subject_alt_names
from exporter.web.webconfig import WebConfigError, WebSettings, load_web_config
from tests.conftest import require_binary
from tests.pki import SANS, Pki, make_pki

TESTDATA = Path(__file__).parent / "testdata" / "webconfig"
FIXTURES = sorted(TESTDATA.glob("*.yml"))
_PEM_PLACEHOLDER = re.compile(r"^( *)\{pem:([\w.-]+)\}$", re.MULTILINE)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def render(fixture: Path, folder: Path) -> Path:
    """The fixture written into `folder` (where the certificates are), PEM filled in."""

    def pem(match: re.Match[str]) -> str:
        indent, name = match[1], match[2]
        lines = (folder / name).read_text().strip().splitlines()
        return "\n".join(indent + line for line in lines)

    target = folder / fixture.name
    target.write_text(_PEM_PLACEHOLDER.sub(pem, fixture.read_text()))
    return target


def header(fixture: Path, tag: str) -> list[str]:
    """The values of the fixture's leading `# <tag>: ...` comment lines."""
    values = []
    for line in fixture.read_text().splitlines():
        if not line.startswith("#"):
            break
        if line.startswith(f"# {tag}:"):
            values.append(line.removeprefix(f"# {tag}:").strip())
        elif line == f"# {tag}":
            values.append("")
    return values


def placeholders(message: str, path: Path) -> str:
    return message.replace("{file}", str(path)).replace("{dir}", str(path.parent))


def describe(settings: WebSettings, aspect: str) -> str:
    """What an ``# expect <aspect>:`` line compares with."""
    if aspect == "tls":
        return "on" if settings.tls is not None else "off"
    if aspect == "users":
        return ", ".join(settings.basic_auth_users) or "none"
    if aspect == "headers":
        return " | ".join(f"{name}={value}" for name, value in settings.headers.items())
    if aspect == "http2":
        return "on" if settings.http2 else "off"
    if aspect == "rate_limit":
        rate = settings.rate_limit
        return "off" if rate is None else f"1 per {rate.interval:g}s, burst {rate.burst}"
    raise AssertionError(f"unknown aspect {aspect!r}")


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_fixture(fixture: Path, pki: Pki) -> None:
    errors, oks, warnings = (
        header(fixture, "error"),
        header(fixture, "ok"),
        header(fixture, "warning"),
    )
    assert len(errors) + bool(oks or warnings) == 1, (
        f"{fixture.name}: one '# error' or '# ok'/'# warning'"
    )
    path = render(fixture, pki.folder)
    if errors:
        with pytest.raises(WebConfigError) as caught:
            load_web_config(path)
        assert str(caught.value) == placeholders(errors[0], path)
        return
    settings = load_web_config(path)
    assert list(settings.warnings) == warnings
    for line in fixture.read_text().splitlines():
        expected = re.match(r"# expect (\w+): (.*)$", line)
        if expected:
            assert describe(settings, expected[1]) == expected[2], line


def test_every_fixture_says_what_promtool_does_or_why_not() -> None:
    unmarked = [
        f.name
        for f in FIXTURES
        if not header(f, "promtool") and "promtool 2.42" not in f.read_text() and header(f, "ok")
    ]
    assert unmarked == []


def test_promtool_agrees_where_marked(pki: Pki) -> None:
    """promtool check web-config 2.42 (an older toolkit) gives the same verdict where marked."""
    promtool = require_binary("promtool")
    marks = {f.name: header(f, "promtool") for f in FIXTURES}
    refuses = [name for name, mark in marks.items() if mark == ["refuses"]]
    accepts = [name for name, mark in marks.items() if mark == ["accepts"]]
    assert len(refuses) > 25 and len(accepts) > 20
    for name in refuses + accepts:
        render(TESTDATA / name, pki.folder)
    result = subprocess.run(
        [promtool, "check", "web-config", *refuses, *accepts],
        cwd=pki.folder,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert [n for n in refuses if f"{n} FAILED" not in output] == [], output
    assert [n for n in accepts if f"{n} SUCCESS" not in output] == [], output


def test_errors_never_show_a_password_or_hash(pki: Pki) -> None:
    for name, secret in (
        ("user_plain_password.yml", "hunter2"),
        ("user_hash_no_dollar.yml", "passphrase"),
        ("user_hash_cost_not_number.yml", "s37QOBYaJX"),
    ):
        with pytest.raises(WebConfigError) as caught:
            load_web_config(render(TESTDATA / name, pki.folder))
        assert secret not in str(caught.value)
    inline_key = load_web_config(render(TESTDATA / "tls_require_any_inline_key.yml", pki.folder))
    assert "PRIVATE KEY" not in repr(inline_key)


def test_missing_config_file_is_named() -> None:
    with pytest.raises(WebConfigError, match=r"^/nonexistent/web\.yml: cannot read: No such file"):
        load_web_config("/nonexistent/web.yml")


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    for name in ("server.crt", "server.key"):
        shutil.copy(pki / name, conf / name)
    (conf / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    settings = load_web_config("etc/web.yml")
    assert settings.tls is not None and settings.tls.cert_file == Path("etc/server.crt")
    assert isinstance(settings.ssl_context(), ssl.SSLContext)


def test_repr_never_shows_the_hashes(pki: Pki) -> None:
    settings = load_web_config(render(TESTDATA / "users.yml", pki.folder))
    assert "<secret>" in repr(settings)
    assert "$2" not in repr(settings)


# --- go-yaml v2 semantics ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("1s", 1.0),
        ("250ms", 0.25),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("-2s", -2.0),
        ("+3us", 3e-6),
        ("1h1m1s1ms1us1ns", 3661.001001001),
        (".5s", 0.5),
        ("1µs", 1e-6),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert goyaml.parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1d", "s", "1s2", "1 s", "--1s", "1.s.", "0s0"])
def test_not_go_durations(text: str) -> None:
    assert goyaml.parse_go_duration(text) is None


def test_scalars_read_as_go_types() -> None:
    tree = goyaml.load("a: yes\nb: 'yes'\nc: y\nd: 0x10\ne: 1.9\nf: ~\ng: 2001-12-14\n")
    assert isinstance(tree, dict)
    assert [goyaml.as_string(tree[k]) for k in "abdefg"] == [
        "yes",
        "yes",
        "0x10",
        "1.9",
        "",
        "2001-12-14",
    ]
    assert goyaml.as_bool(tree["a"], default=False) is True
    assert goyaml.as_bool(tree["c"], default=False) is True  # go-yaml v2's y
    assert goyaml.as_bool(tree["f"], default=True) is False  # null is Go's zero value
    with pytest.raises(goyaml.GoTypeError, match="expected a boolean, got a string"):
        goyaml.as_bool(tree["b"], default=False)
    assert goyaml.as_int(tree["d"]) == 16 and goyaml.as_int(tree["e"]) == 1
    with pytest.raises(goyaml.GoTypeError, match="recursive alias"):
        goyaml.load("a: &x [1, *x]\n")


# --- SANs --------------------------------------------------------------------------------------


def test_sans_are_read_as_go_writes_them(pki: Pki) -> None:
    der = ssl.PEM_cert_to_DER_cert((pki / "sans.crt").read_text())
    assert subject_alt_names(der) == [*SANS, "2001:db8::7"]
    # Python's own decoder (verified certificates only) agrees, in its own spelling of IPv6.
    python = ssl._ssl._test_decode_cert(str(pki / "sans.crt"))["subjectAltName"]  # type: ignore[attr-defined]
    assert [value for _, value in python][:4] == list(SANS)
    assert subject_alt_names(ssl.PEM_cert_to_DER_cert((pki / "client.crt").read_text())) == []
    with pytest.raises(ValueError):
        subject_alt_names(der[:-40])
