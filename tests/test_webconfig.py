"""exporter.web.webconfig: the exporter-toolkit web config file, served for real over loopback.

Certificates are made at test time with the openssl CLI (nothing is committed); servers are
tiny aiohttp apps wired exactly as the exporter wires them; clients are httpx and curl.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest
from aiohttp import web

from exporter.web import auth as web_auth
from exporter.web.webconfig import BasicAuth, Secret, WebConfigError, WebSettings, load_web_config
from tests.conftest import BackgroundLoop, require_binary

TESTDATA = Path(__file__).parent / "testdata" / "webconfig"
INVALID = sorted(TESTDATA.glob("*.yml"))
EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"
DEMO_USER, DEMO_PASSWORD = "prometheus", "demo-scrape-password"  # as documented in the example
RELATIVE_TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"


# --- Certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    rogue_crt: Path  # self-signed: a client certificate the CA never issued
    rogue_key: Path
    other_key: Path  # a valid key that belongs to no certificate here
    encrypted_key: Path

    @property
    def client(self) -> tuple[Path, Path]:
        return self.client_crt, self.client_key

    @property
    def rogue(self) -> tuple[Path, Path]:
        return self.rogue_crt, self.rogue_key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    openssl = require_binary("openssl")
    d = tmp_path_factory.mktemp("pki")
    # EC P-256 keys: generated in milliseconds, unlike RSA.
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"]

    def req(name: str, subject: str, *extra: str) -> None:
        subprocess.run(
            [openssl, "req", "-x509", *new_key, "-subj", subject, *extra,
             "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.crt")],
            check=True, capture_output=True,
        )  # fmt: skip

    issued_by_ca = ["-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key")]
    leaf = "basicConstraints=CA:FALSE"
    req("ca", "/CN=webconfig test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    req("server", "/CN=localhost", *issued_by_ca, "-addext", leaf,
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-addext", "extendedKeyUsage=serverAuth")  # fmt: skip
    req("client", "/CN=prometheus", *issued_by_ca, "-addext", leaf,
        "-addext", "extendedKeyUsage=clientAuth")  # fmt: skip
    req("rogue", "/CN=prometheus", "-addext", leaf, "-addext", "extendedKeyUsage=clientAuth")
    subprocess.run(
        [openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-out", str(d / "other.key")],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [openssl, "pkey", "-in", str(d / "server.key"), "-aes256", "-passout", "pass:secret",
         "-out", str(d / "encrypted.key")],
        check=True, capture_output=True,
    )  # fmt: skip
    return Pki(
        ca=d / "ca.crt",
        server_crt=d / "server.crt",
        server_key=d / "server.key",
        client_crt=d / "client.crt",
        client_key=d / "client.key",
        rogue_crt=d / "rogue.crt",
        rogue_key=d / "rogue.key",
        other_key=d / "other.key",
        encrypted_key=d / "encrypted.key",
    )


def tls_config(pki: Pki, extra: str = "", *, key: Path | None = None) -> str:
    return (
        "tls_server_config:\n"
        f"  cert_file: {pki.server_crt}\n"
        f"  key_file: {key or pki.server_key}\n" + extra
    )


def load(tmp_path: Path, text: str) -> WebSettings:
    path = tmp_path / "web-config.yml"
    path.write_text(text)
    return load_web_config(path)


# --- A server wired like the exporter's, and clients ------------------------------------------


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(text="deepseek_up 1\n")


async def _own_header(request: web.Request) -> web.Response:
    return web.Response(text="own\n", headers={"X-Frame-Options": "sameorigin"})


@contextmanager
def serve(settings: WebSettings) -> Iterator[str]:
    """Serve a two-route app with `settings`, exactly as exporter.app wires them; yield its URL."""
    app = web.Application()
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/own-header", _own_header)
    ssl_context = settings.ssl_context()
    app.middlewares.append(settings.auth_middleware())
    loop = BackgroundLoop()
    runner = web.AppRunner(app, access_log=None)
    try:
        loop.run(runner.setup())
        loop.run(web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context).start())
        scheme = "https" if ssl_context else "http"
        yield f"{scheme}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        loop.run(runner.cleanup())
        loop.close()


def client_tls(
    pki: Pki,
    cert: tuple[Path, Path] | None = None,
    *,
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    curve: str | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    if min_version is not None:
        ctx.minimum_version = min_version
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if curve is not None:
        ctx.set_ecdh_curve(curve)
    return ctx


@dataclass(frozen=True)
class Reply:
    status: int
    headers: httpx.Headers
    tls_version: str | None
    cipher: str | None


def get(
    url: str,
    tls: ssl.SSLContext | None = None,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    with httpx.Client(verify=tls if tls is not None else True, timeout=5) as client:
        response = client.get(url, auth=auth, headers=headers)
        ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
        return Reply(
            status=response.status_code,
            headers=response.headers,
            tls_version=ssl_object.version() if ssl_object else None,
            cipher=ssl_object.cipher()[0] if ssl_object else None,
        )


def refused(url: str, tls: ssl.SSLContext | None = None) -> bool:
    """Whether the connection fails below HTTP (handshake refused, or dropped right after)."""
    try:
        get(url, tls)
    except httpx.TransportError:
        return True
    return False


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The hash of every bcrypt comparison the server runs, in order."""
    calls: list[bytes] = []
    real = web_auth._bcrypt_check

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(web_auth, "_bcrypt_check", counting)
    return calls


def bcrypt_hash(password: str, cost: int = 4, prefix: str = "$2b$") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()
    return prefix + hashed[4:]


# --- Invalid files ----------------------------------------------------------------------------


def expected_error(fixture: Path) -> str:
    first = fixture.read_text().splitlines()[0]
    assert first.startswith("# error: "), f"{fixture.name} must start with '# error: <message>'"
    message = first.removeprefix("# error: ")
    return message.replace("{file}", str(fixture)).replace("{dir}", str(fixture.parent))


@pytest.mark.parametrize("fixture", INVALID, ids=[f.stem for f in INVALID])
def test_invalid_file_is_refused_with_its_one_line(fixture: Path) -> None:
    with pytest.raises(WebConfigError) as caught:
        load_web_config(fixture)
    assert str(caught.value) == expected_error(fixture)
    assert "\n" not in str(caught.value)


def test_promtool_also_refuses_the_fixtures_marked_so() -> None:
    """The checks copied from the Go toolkit agree with it (the others are ours, stricter)."""
    promtool = require_binary("promtool")
    marked = [f.name for f in INVALID if "# promtool: refuses" in f.read_text()]
    assert len(marked) > 20
    result = subprocess.run(
        [promtool, "check", "web-config", *marked],
        cwd=TESTDATA,
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert [name for name in marked if f"{name} FAILED" not in output] == [], output


def test_errors_never_show_a_password_or_hash(tmp_path: Path) -> None:
    plain = TESTDATA / "user_plain_password.yml"
    with pytest.raises(WebConfigError) as caught:
        load_web_config(plain)
    assert "hunter2" not in str(caught.value)
    truncated = TESTDATA / "user_hash_truncated.yml"
    with pytest.raises(WebConfigError) as caught:
        load_web_config(truncated)
    assert "$2y$04$" not in str(caught.value)


def test_missing_config_file_is_named() -> None:
    with pytest.raises(WebConfigError, match=r"^/nonexistent/web\.yml: cannot read: No such file"):
        load_web_config("/nonexistent/web.yml")


def test_key_that_does_not_match_the_certificate(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(WebConfigError) as caught:
        load(tmp_path, tls_config(pki, key=pki.other_key))
    assert str(caught.value) == (
        f"{tmp_path}/web-config.yml: tls_server_config.key_file: "
        f"'{pki.other_key}' does not match the certificate in '{pki.server_crt}'"
    )


def test_garbage_key_file(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(WebConfigError) as caught:
        load(tmp_path, tls_config(pki, key=pki.ca))  # a certificate where the key should be
    assert str(caught.value) == (
        f"{tmp_path}/web-config.yml: tls_server_config.key_file: "
        f"no usable PEM private key in '{pki.ca}'"
    )


def test_passphrase_protected_key_is_refused_without_prompting(tmp_path: Path, pki: Pki) -> None:
    # Without the passphrase callback OpenSSL would read the terminal: this would hang.
    with pytest.raises(WebConfigError, match=r"key_file: '.*encrypted\.key' is passphrase-prot"):
        load(tmp_path, tls_config(pki, key=pki.encrypted_key))


def test_client_ca_file_missing_or_not_a_certificate(tmp_path: Path, pki: Pki) -> None:
    verify = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {}\n"
    with pytest.raises(WebConfigError) as caught:
        load(tmp_path, tls_config(pki, verify.format(tmp_path / "nope.crt")))
    assert str(caught.value).endswith(
        f"tls_server_config.client_ca_file: cannot read '{tmp_path}/nope.crt': "
        "No such file or directory"
    )
    with pytest.raises(WebConfigError) as caught:
        load(tmp_path, tls_config(pki, verify.format(pki.server_key)))
    assert str(caught.value).endswith(
        f"tls_server_config.client_ca_file: no PEM certificate in '{pki.server_key}'"
    )


def test_ssl_context_rereads_files_and_names_the_one_gone(tmp_path: Path, pki: Pki) -> None:
    shutil.copy(pki.server_crt, tmp_path / "server.crt")
    shutil.copy(pki.server_key, tmp_path / "server.key")
    settings = load(tmp_path, RELATIVE_TLS)
    (tmp_path / "server.key").unlink()
    with pytest.raises(WebConfigError, match=r"key_file: cannot read '.*/server\.key': No such"):
        settings.ssl_context()


# --- Valid files ------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(
    tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    for src, name in ((pki.server_crt, "server.crt"), (pki.server_key, "server.key")):
        shutil.copy(src, conf / name)
    (conf / "web.yml").write_text(RELATIVE_TLS)
    monkeypatch.chdir(tmp_path)  # not the config's folder
    settings = load_web_config("etc/web.yml")
    assert settings.tls is not None
    assert settings.tls.cert_file == Path("etc/server.crt")
    assert isinstance(settings.ssl_context(), ssl.SSLContext)


def test_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    settings = load(tmp_path, "")
    assert settings.ssl_context() is None
    assert settings == load(tmp_path, "tls_server_config:\nhttp_server_config: {}\n")
    with serve(settings) as url:
        reply = get(f"{url}/metrics")
    assert reply.status == 200
    assert "X-Frame-Options" not in reply.headers


def test_repr_never_shows_the_hashes(tmp_path: Path) -> None:
    hashed = bcrypt_hash("pw")
    settings = load(tmp_path, f"basic_auth_users:\n  alice: {hashed}\n")
    assert settings.basic_auth_users == {"alice": Secret(hashed)}
    assert "<secret>" in repr(settings)
    assert hashed not in repr(settings)
    assert hashed[7:] not in str(settings)
    assert hashed not in repr(BasicAuth(settings.basic_auth_users))


def test_accepted_but_not_fully_honoured_options_load(
    tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load(
        tmp_path,
        tls_config(
            pki,
            "  min_version: TLS10\n"  # acts as TLS12: OpenSSL 3 refuses older ones anyway
            "  curve_preferences: [CurveP384, X25519]\n"
            "  cipher_suites: [TLS_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n"
            "  client_auth_type: RequestClientCert\n",
        )
        + "http_server_config:\n  http2: false\n",
    )
    assert settings.http2 is False
    assert "using CurveP384 only" in caplog.text
    ctx = settings.ssl_context()
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE  # RequestClientCert checks nothing, like Go
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-ECDSA-AES128-GCM-SHA256"]


# --- TLS over loopback ------------------------------------------------------------------------


def test_tls_is_served_and_plain_http_is_refused(tmp_path: Path, pki: Pki) -> None:
    with serve(load(tmp_path, tls_config(pki))) as url:
        assert url.startswith("https://")
        reply = get(f"{url}/metrics", client_tls(pki))
        assert (reply.status, reply.tls_version) == (200, "TLSv1.3")
        assert refused(url.replace("https://", "http://") + "/metrics")
        assert refused(f"{url}/metrics", ssl.create_default_context())  # untrusted issuer


def test_min_version_tls13_refuses_a_tls12_client(tmp_path: Path, pki: Pki) -> None:
    with serve(load(tmp_path, tls_config(pki, "  min_version: TLS13\n"))) as url:
        assert refused(url, client_tls(pki, max_version=ssl.TLSVersion.TLSv1_2))
        assert get(f"{url}/metrics", client_tls(pki)).tls_version == "TLSv1.3"
        # curl, a client of its own: exit code 35 is "SSL connect error".
        curl = require_binary("curl")
        base = [curl, "-sS", "-o", "/dev/null", "--cacert", str(pki.ca), f"{url}/metrics"]
        assert subprocess.run([*base, "--tls-max", "1.2"], capture_output=True).returncode == 35
        assert subprocess.run(base, capture_output=True).returncode == 0


def test_max_version_tls12_refuses_a_tls13_only_client(tmp_path: Path, pki: Pki) -> None:
    with serve(load(tmp_path, tls_config(pki, "  max_version: TLS12\n"))) as url:
        assert refused(url, client_tls(pki, min_version=ssl.TLSVersion.TLSv1_3))
        assert get(f"{url}/metrics", client_tls(pki)).tls_version == "TLSv1.2"


def test_cipher_suites_restrict_and_order_tls12(tmp_path: Path, pki: Pki) -> None:
    suites = (
        "  max_version: TLS12\n  cipher_suites:\n"
        "    - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n"
        "    - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n"
    )
    client_order = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
    with serve(load(tmp_path, tls_config(pki, suites))) as url:
        # prefer_server_cipher_suites defaults to true: the file's order beats the client's.
        reply = get(f"{url}/metrics", client_tls(pki, ciphers=client_order))
        assert reply.cipher == "ECDHE-ECDSA-AES256-GCM-SHA384"
        assert refused(url, client_tls(pki, ciphers="ECDHE-ECDSA-CHACHA20-POLY1305"))
    prefer_client = suites + "  prefer_server_cipher_suites: false\n"
    with serve(load(tmp_path, tls_config(pki, prefer_client))) as url:
        reply = get(f"{url}/metrics", client_tls(pki, ciphers=client_order))
        assert reply.cipher == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_curve_preferences_first_curve_is_the_only_one_offered(tmp_path: Path, pki: Pki) -> None:
    with serve(load(tmp_path, tls_config(pki, "  curve_preferences: [CurveP384]\n"))) as url:
        assert refused(url, client_tls(pki, curve="X25519"))
        assert get(f"{url}/metrics", client_tls(pki, curve="secp384r1")).status == 200


def test_require_and_verify_client_cert(tmp_path: Path, pki: Pki) -> None:
    extra = f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki.ca}\n"
    with serve(load(tmp_path, tls_config(pki, extra))) as url:
        assert get(f"{url}/metrics", client_tls(pki, pki.client)).status == 200
        assert refused(f"{url}/metrics", client_tls(pki))
        assert refused(f"{url}/metrics", client_tls(pki, pki.rogue))


def test_verify_client_cert_if_given(tmp_path: Path, pki: Pki) -> None:
    extra = f"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: {pki.ca}\n"
    with serve(load(tmp_path, tls_config(pki, extra))) as url:
        assert get(f"{url}/metrics", client_tls(pki)).status == 200
        assert get(f"{url}/metrics", client_tls(pki, pki.client)).status == 200
        assert refused(f"{url}/metrics", client_tls(pki, pki.rogue))


# --- Basic auth and headers -------------------------------------------------------------------


@pytest.fixture
def auth_server(tmp_path: Path, pki: Pki) -> Iterator[str]:
    # alice's hash is in htpasswd's $2y$ form; bob's costs more, so the dummy must match his.
    users = (
        "basic_auth_users:\n"
        f"  alice: {bcrypt_hash('alice-pw', 4, '$2y$')}\n"
        f"  bob: {bcrypt_hash('bob-pw', 5)}\n"
    )
    headers = (
        "http_server_config:\n  headers:\n"
        "    X-Frame-Options: deny\n"
        "    X-Content-Type-Options: nosniff\n"
        "    Content-Security-Policy: default-src 'none'\n"
        "    Strict-Transport-Security: ''\n"  # blank: not sent
    )
    with serve(load(tmp_path, tls_config(pki) + users + headers)) as url:
        yield url


def test_basic_auth_right_wrong_missing_unknown(
    auth_server: str, pki: Pki, bcrypt_calls: list[bytes]
) -> None:
    url, tls = f"{auth_server}/metrics", client_tls(pki)
    assert get(url, tls, auth=("alice", "alice-pw")).status == 200  # $2y$ hash works
    assert get(url, tls, auth=("bob", "bob-pw")).status == 200
    for auth in (("alice", "bob-pw"), ("mallory", "alice-pw"), None):
        reply = get(url, tls, auth=auth)
        assert reply.status == 401, auth
        assert reply.headers["WWW-Authenticate"].startswith("Basic")
    for header in ("Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        assert get(url, tls, headers={"Authorization": header}).status == 401
    # An unknown user costs one bcrypt check at the cost of the slowest real hash, so its
    # response time matches a wrong password; malformed headers cost none.
    assert len(bcrypt_calls) == 4
    assert bcrypt_calls[3][:7] == b"$2b$05$"
    assert bcrypt_calls[3] not in (bcrypt_calls[0], bcrypt_calls[1])


def test_successful_checks_are_cached_and_failures_are_not(
    auth_server: str, pki: Pki, bcrypt_calls: list[bytes]
) -> None:
    url, tls = f"{auth_server}/metrics", client_tls(pki)
    for _ in range(3):
        assert get(url, tls, auth=("alice", "alice-pw")).status == 200
    assert len(bcrypt_calls) == 1
    for _ in range(2):
        assert get(url, tls, auth=("alice", "wrong")).status == 401
        assert get(url, tls, auth=("nobody", "alice-pw")).status == 401
    assert len(bcrypt_calls) == 5
    assert get(url, tls, auth=("alice", "alice-pw")).status == 200  # still cached
    assert len(bcrypt_calls) == 5


def test_basic_auth_with_curl(auth_server: str, pki: Pki) -> None:
    curl = require_binary("curl")
    base = [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(pki.ca)]
    codes = [
        subprocess.run(
            [*base, "-u", user, f"{auth_server}/metrics"], capture_output=True, text=True
        )
        for user in ("alice:alice-pw", "alice:nope")
    ]
    assert [c.stdout for c in codes] == ["200", "401"]


def test_headers_are_added_to_every_response(auth_server: str, pki: Pki) -> None:
    tls, alice = client_tls(pki), ("alice", "alice-pw")
    replies = [
        get(f"{auth_server}/metrics", tls, auth=alice),
        get(f"{auth_server}/metrics", tls),  # 401
        get(f"{auth_server}/no-such-page", tls, auth=alice),  # 404 raised by the router
    ]
    assert [r.status for r in replies] == [200, 401, 404]
    for reply in replies:
        assert reply.headers["X-Frame-Options"] == "deny"
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
        assert reply.headers["Content-Security-Policy"] == "default-src 'none'"
        assert "Strict-Transport-Security" not in reply.headers
    # A header the handler sets itself wins, as in the Go toolkit.
    assert get(f"{auth_server}/own-header", tls, auth=alice).headers["X-Frame-Options"] == (
        "sameorigin"
    )


def test_cache_is_bounded_lru(bcrypt_calls: list[bytes]) -> None:
    users = {name: Secret(bcrypt_hash(name)) for name in ("a", "b", "c")}
    auth = BasicAuth(users, cache_size=2)

    async def scenario() -> list[bool]:
        return [await auth.check(name, name.encode()) for name in "abcca"]

    assert asyncio.run(scenario()) == [True] * 5
    # a, b, c checked; c cached; a had been evicted by c, so it is checked again.
    assert len(bcrypt_calls) == 4


def test_htpasswd_and_go_hashes_verify() -> None:
    # The exporter-toolkit's own $2y$ hash of "fakepassword" (web/handler.go), made by Go.
    go_hash = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
    assert web_auth._bcrypt_check(b"fakepassword", web_auth._normalise_hash(go_hash))
    assert not web_auth._bcrypt_check(b"fakepassword!", web_auth._normalise_hash(go_hash))


def test_passwords_longer_than_72_bytes_use_the_first_72() -> None:
    # bcrypt only reads 72 bytes; the Python package raises instead of truncating like Go.
    hashed = web_auth._normalise_hash(bcrypt_hash("x" * 72))
    assert web_auth._bcrypt_check(b"x" * 100, hashed)
    assert not web_auth._bcrypt_check(b"y" * 100, hashed)


# --- The documented examples ------------------------------------------------------------------


def test_example_web_config_passes_promtool_and_serves(tmp_path: Path, pki: Pki) -> None:
    example = EXAMPLES / "web-config.yml"
    assert f'"{DEMO_USER}" with the password "{DEMO_PASSWORD}"' in example.read_text()
    shutil.copy(example, tmp_path / "web-config.yml")
    shutil.copy(pki.server_crt, tmp_path / "server.crt")
    shutil.copy(pki.server_key, tmp_path / "server.key")
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "web-config", "web-config.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "web-config.yml SUCCESS" in result.stdout + result.stderr

    settings = load_web_config(tmp_path / "web-config.yml")
    with serve(settings) as url:
        assert get(f"{url}/metrics", client_tls(pki), auth=(DEMO_USER, DEMO_PASSWORD)).status == 200
        assert get(f"{url}/metrics", client_tls(pki), auth=(DEMO_USER, "guess")).status == 401


def test_example_mtls_web_config_passes_promtool_and_serves(tmp_path: Path, pki: Pki) -> None:
    shutil.copy(EXAMPLES / "web-config-mtls.yml", tmp_path / "web-config.yml")
    shutil.copy(pki.ca, tmp_path / "ca.crt")
    shutil.copy(pki.server_crt, tmp_path / "server.crt")
    shutil.copy(pki.server_key, tmp_path / "server.key")
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "web-config", "web-config.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    with serve(load_web_config(tmp_path / "web-config.yml")) as url:
        reply = get(f"{url}/metrics", client_tls(pki, pki.client))
        assert (reply.status, reply.tls_version) == (200, "TLSv1.3")
        assert reply.headers["Strict-Transport-Security"] == "max-age=31536000"
        assert refused(f"{url}/metrics", client_tls(pki))
