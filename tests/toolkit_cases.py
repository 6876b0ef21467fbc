"""The exporter-toolkit's own test cases, as data: what its tests expect, and a runner.

From github.com/prometheus/exporter-toolkit (web/tls_config_test.go, web/handler_test.go and
web/testdata): for each of its 41 fixture files, the outcome its tests expect when the file
is loaded; and its 39 server scenarios (TestServerBehaviour, TestUsers, TestConfigReloading
and the four handler tests), each a server started with one fixture and a client doing what
the Go test's client does. Outcomes are strings so that results compare with ``==``:

- ``accepted`` / ``refused: <reason>`` for a file, the reason being the Go test's ErrorMap
  key; :data:`REASONS` says which of our messages name that same problem;
- ``ok``, ``status <code>``, ``no connection`` (refused below HTTP), ``start refused:
  <reason>`` for a scenario.

The runner serves with exporter.web.listener exactly as the exporter does. It runs against
an :class:`Environment`: this project's own fixtures and certificates (tests/
test_webconfig_toolkit.py), or the toolkit's files when its repository is on the machine
(scripts/replay-toolkit). No file of the toolkit is copied here: only its expectations.
"""

from __future__ import annotations

import re
import shutil
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from exporter.web.tls import CIPHER_SUITES
from exporter.web.webconfig import WebConfigError, load_web_config
from tests.webconfig_server import BODY, client_tls, serve

ACCEPTED = "accepted"
HTTP2_ONLY = "refused at start: No HTTP2 cipher"  # Go's HTTP/2 server setup, not the file
# What this exporter does instead (HTTP/1.1 only): loads, and its warning says Go would not.
HTTP2_HERE = "accepted, warning that Go's HTTP/2 server would refuse it"

# The Go tests' ErrorMap keys -> our messages that name the same problem.
REASONS = {
    "No such file": r"cannot read '[^']*': No such file or directory",
    "YAML error": r"invalid YAML|unknown key|expected a mapping",
    "Invalid Cert or CertPath": r"missing one of cert or cert_file",
    "Invalid Key or KeyPath": r"missing one of key or key_file",
    "ClientCA set without policy": r"client_ca(_file)?: set but client_auth_type is NoClientCert",
    "Bad password": r"too short to be a bcrypt hash",
    "Unknown cipher": r"unknown cipher",
    "Unknown curve": r"unknown curve",
    "Unknown TLS version": r"unknown TLS version",
    "Invalid value": r"headers\.[\w-]+: invalid value",
    "Invalid header": r"header '[^']*' cannot be configured",
}

# Every fixture of web/testdata and the outcome the toolkit's tests expect when it is loaded.
# Two files no Go test reads are given what the toolkit's code does with them.
FIXTURES: dict[str, str] = {
    "tls_config_noAuth.requireandverifyclientcert.good.yml": ACCEPTED,
    "tls_config_noAuth.requireanyclientcert.good.yml": ACCEPTED,
    "tls_config_noAuth.requireanyclientcertkeyinline.good.yml": ACCEPTED,  # read by no test
    "web_config_auth_clientCAs_invalid.bad.yml": "refused: No such file",
    # Read by no test; the same content as web_config_noAuth.good.blocking.yml, which loads.
    "web_config_auth_clientCAs_missing.bad.yml": ACCEPTED,
    "web_config_auth_client_san.bad.yaml": ACCEPTED,
    "web_config_auth_client_san.good.yaml": ACCEPTED,
    "web_config_auth_user_list_invalid.bad.yml": "refused: Bad password",
    "web_config_empty.yml": ACCEPTED,
    "web_config_headers.good.yml": ACCEPTED,
    "web_config_headers_content_type_options.bad.yml": "refused: Invalid value",
    "web_config_headers_extra_header.bad.yml": "refused: Invalid header",
    "web_config_headers_frame_options.bad.yml": "refused: Invalid value",
    "web_config_junk.yml": "refused: YAML error",
    "web_config_junk_key.yml": "refused: YAML error",
    "web_config_noAuth.bad.yml": "refused: ClientCA set without policy",
    "web_config_noAuth.good.blocking.yml": ACCEPTED,
    "web_config_noAuth.good.yml": ACCEPTED,
    "web_config_noAuth_allCiphers.good.yml": ACCEPTED,
    "web_config_noAuth_allCurves.good.yml": ACCEPTED,
    "web_config_noAuth_certPath_empty.bad.yml": "refused: Invalid Cert or CertPath",
    "web_config_noAuth_certPath_invalid.bad.yml": "refused: No such file",
    "web_config_noAuth_certPath_keyPath_empty.bad.yml": "refused: Invalid Cert or CertPath",
    "web_config_noAuth_certPath_keyPath_invalid.bad.yml": "refused: No such file",
    "web_config_noAuth_cert_empty.bad.yml": "refused: Invalid Cert or CertPath",
    "web_config_noAuth_inventedCiphers.bad.yml": "refused: Unknown cipher",
    "web_config_noAuth_inventedCurves.bad.yml": "refused: Unknown curve",
    "web_config_noAuth_keyPath_empty.bad.yml": "refused: Invalid Key or KeyPath",
    "web_config_noAuth_keyPath_invalid.bad.yml": "refused: No such file",
    "web_config_noAuth_key_empty.bad.yml": "refused: Invalid Key or KeyPath",
    "web_config_noAuth_noHTTP2.good.yml": ACCEPTED,
    "web_config_noAuth_noHTTP2Cipher.bad.yml": HTTP2_ONLY,
    "web_config_noAuth_someCiphers.good.yml": ACCEPTED,
    "web_config_noAuth_someCiphers_noOrder.good.yml": ACCEPTED,
    "web_config_noAuth_someCurves.good.yml": ACCEPTED,
    "web_config_noAuth_tlsInline.good.yml": ACCEPTED,
    "web_config_noAuth_wrongTLSVersion.bad.yml": "refused: Unknown TLS version",
    "web_config_rate_limiter_nonblocking.yaml": ACCEPTED,
    "web_config_rate_limiter_one_second.yaml": ACCEPTED,
    "web_config_users.good.yml": ACCEPTED,
    "web_config_users_noTLS.good.yml": ACCEPTED,
}


def reason(message: str) -> str:
    """The ErrorMap key whose problem our message names, or the message itself."""
    for key, pattern in REASONS.items():
        if re.search(pattern, message):
            return key
    return message


def load_outcome(path: Path) -> str:
    """What loading a file gives, in the words of :data:`FIXTURES`."""
    try:
        settings = load_web_config(path)
    except WebConfigError as err:
        return f"refused: {reason(str(err))}"
    if any("Go exporters refuse to start with this list" in w for w in settings.warnings):
        return HTTP2_HERE
    return ACCEPTED


# --- Scenarios ----------------------------------------------------------------------------


@dataclass
class Environment:
    """Where a scenario's files come from, and the passwords and certificates they imply."""

    fixture: Callable[[str], Path]  # toolkit fixture name -> a file with the same case
    ca: Path  # what the client trusts
    client_certs: dict[str, tuple[Path, Path]]  # "self-signed", "sans"
    passwords: dict[str, str]  # alice, carol, dave -> their password
    hashes: dict[str, str]  # alice -> her hash in the users fixtures
    # False where OpenSSL cannot verify the server's chain though Go can (the toolkit's CA
    # carries only anyExtendedKeyUsage, which OpenSSL refuses as a purpose and Go accepts):
    # that is the client's business, not the listener's under test.
    verify_server: bool = True


@dataclass(frozen=True)
class Client:
    tls: bool = False
    max_version: ssl.TLSVersion | None = None
    ciphers: tuple[str, ...] = ()  # Go names
    curve: str | None = None  # OpenSSL name
    cert: str | None = None  # a key of Environment.client_certs
    user: str | None = None
    password: str | None = None  # default: the user's right password
    requests: int = 1


@dataclass(frozen=True)
class Scenario:
    name: str
    fixture: str | None  # a key of FIXTURES; None: no web config at all
    client: Client = field(default_factory=Client)
    expect: str = "ok"
    cipher: str | None = None  # the cipher the handshake must pick (Go name)
    run: Callable[[Scenario, Environment], str] | None = None  # a scenario of its own shape


def _ssl_context(env: Environment, client: Client) -> ssl.SSLContext:
    cert = env.client_certs[client.cert] if client.cert else None
    legacy = client.max_version is not None and client.max_version < ssl.TLSVersion.TLSv1_2
    ctx = client_tls(
        env.ca,
        cert,
        min_version=ssl.TLSVersion.TLSv1 if legacy else None,
        max_version=client.max_version,
        curve=client.curve,
    )
    if client.ciphers:
        ctx.set_ciphers(":".join(str(CIPHER_SUITES[c]) for c in client.ciphers))
    if not env.verify_server:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _request(url: str, env: Environment, client: Client, http: httpx.Client) -> str:
    """One request: "ok", "status <code>" or "no connection"."""
    return _exchange(url, env, client, http)[0]


def _exchange(
    url: str, env: Environment, client: Client, http: httpx.Client
) -> tuple[str, str | None]:
    """One request's outcome, and the cipher its TLS connection uses."""
    auth = None
    if client.user is not None:
        auth = (client.user, client.password or env.passwords.get(client.user, "x"))
    try:
        response = http.get(url, auth=auth)
    except httpx.TransportError:
        return "no connection", None
    if response.status_code != 200 or response.text != BODY:
        return f"status {response.status_code}", None
    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    return "ok", ssl_object.cipher()[0] if ssl_object else None


def run_scenario(scenario: Scenario, env: Environment) -> str:
    """The scenario's outcome against `env`, in the words of Scenario.expect."""
    if scenario.run is not None:
        return scenario.run(scenario, env)
    path = env.fixture(scenario.fixture) if scenario.fixture else None
    client = scenario.client
    try:
        with serve(path) as served:
            scheme = "https" if client.tls else "http"
            url = f"{scheme}://{served.url.split('://', 1)[1]}"
            verify: ssl.SSLContext | bool = _ssl_context(env, client) if client.tls else True
            outcome, cipher = "ok", None
            for _ in range(client.requests + 1):  # the Go test sends requests + 1
                with httpx.Client(verify=verify, timeout=30) as http:
                    outcome, cipher = _exchange(url, env, client, http)
                if outcome != "ok":
                    break
    except WebConfigError as err:
        return f"start refused: {reason(str(err))}"
    if outcome == "ok" and scenario.cipher is not None and cipher != CIPHER_SUITES[scenario.cipher]:
        return f"cipher {cipher}"
    return outcome


def _config_reloading(scenario: Scenario, env: Environment) -> str:
    """TestConfigReloading: a client without a certificate is refused; the file is replaced
    by one that does not require a certificate; the next connection is served."""
    blocking = env.fixture("web_config_noAuth.good.blocking.yml")
    good = env.fixture("web_config_noAuth.good.yml")
    live = blocking.parent / "reloading.yml"  # next to the certificates the fixtures name
    shutil.copy(blocking, live)
    client = Client(tls=True)
    with serve(live) as served, httpx.Client(verify=_ssl_context(env, client), timeout=30) as http:
        first = _request(served.url, env, client, http)
        shutil.copy(good, live)
        second = _request(served.url, env, client, http)
    return f"{first}, then {second}"


def _cache(scenario: Scenario, env: Environment) -> str:
    """TestBasicAuthCache: right and wrong logins, then 150 of each at once."""
    right = Client(user="alice")
    wrong = Client(user="alice", password=env.passwords["alice"] + "4")
    with (
        serve(env.fixture("web_config_users_noTLS.good.yml")) as served,
        httpx.Client(timeout=120) as http,
    ):
        outcomes = [_request(served.url, env, c, http) for c in (right, wrong)]
        with ThreadPoolExecutor(32) as pool:
            outcomes += pool.map(lambda c: _request(served.url, env, c, http), [right, wrong] * 150)
    expected = ["ok", "status 401"] * 151
    wrong = sum(a != b for a, b in zip(outcomes, expected, strict=True))
    return f"{wrong} wrong answers" if wrong else "ok"


def _fake_password(scenario: Scenario, env: Environment) -> str:
    """TestBasicAuthWithFakepassword: the unknown-user hash's password logs nobody in."""
    client = Client(user="fakeuser", password="fakepassword")
    with serve(env.fixture("web_config_users_noTLS.good.yml")) as served, httpx.Client() as http:
        return ", ".join(_request(served.url, env, client, http) for _ in range(2))


def _bypass(scenario: Scenario, env: Environment) -> str:
    """TestByPassBasicAuthVuln (CVE-2022-46146): user, hash and password joined differently
    must not share a cache entry."""
    poison = Client(user="alice" + env.hashes["alice"], password="fakepassword")
    unknown_hash = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
    attempt = Client(user="alice", password=unknown_hash + "fakepassword")
    with serve(env.fixture("web_config_users_noTLS.good.yml")) as served, httpx.Client() as http:
        return ", ".join(_request(served.url, env, c, http) for c in (poison, attempt))


def _headers(scenario: Scenario, env: Environment) -> str:
    """TestHTTPHeaders: the configured headers, with their values as written."""
    with serve(env.fixture("web_config_headers.good.yml")) as served:
        headers = httpx.get(served.url).headers
    expected = {
        "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
        "X-Frame-Options": "deny",
        "X-Content-Type-Options": "nosniff",
        "X-XSS-Protection": "1",
    }
    wrong = {k: headers.get(k) for k, v in expected.items() if headers.get(k) != v}
    return "ok" if not wrong else f"headers {wrong}"


_TLS = Client(tls=True)
_AES128, _AES256 = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
_USERS = "web_config_users.good.yml"
_USERS_PLAIN = "web_config_users_noTLS.good.yml"

SCENARIOS: list[Scenario] = [
    # TestServerBehaviour
    Scenario("empty string YAMLConfigPath and default client", None),
    Scenario("empty string YAMLConfigPath and TLS client", None, _TLS, "no connection"),
    Scenario(
        "valid tls config yml and default client",
        "web_config_noAuth.good.yml",
        Client(),
        "status 400",
    ),
    Scenario("valid tls config yml and tls client", "web_config_noAuth.good.yml", _TLS),
    Scenario(
        "valid tls config yml (cert and key inline) and tls client",
        "web_config_noAuth_tlsInline.good.yml",
        _TLS,
    ),
    Scenario(
        "valid tls config yml with TLS 1.1 client",
        "web_config_noAuth.good.yml",
        Client(tls=True, max_version=ssl.TLSVersion.TLSv1_1),
        "no connection",
    ),
    Scenario(
        "valid tls config yml with all ciphers", "web_config_noAuth_allCiphers.good.yml", _TLS
    ),
    Scenario(
        "valid tls config yml with some ciphers",
        "web_config_noAuth_someCiphers.good.yml",
        Client(tls=True, ciphers=(_AES128,)),
    ),
    Scenario(
        "valid tls config yml with no common cipher",
        "web_config_noAuth_someCiphers.good.yml",
        Client(tls=True, ciphers=("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",)),
        "no connection",
    ),
    Scenario(
        "valid tls config yml with multiple client ciphers",
        "web_config_noAuth_someCiphers.good.yml",
        Client(tls=True, ciphers=(_AES128, _AES256)),
        cipher=_AES128,
    ),
    Scenario(
        "valid tls config yml with multiple client ciphers, client chooses cipher",
        "web_config_noAuth_someCiphers_noOrder.good.yml",
        Client(tls=True, ciphers=(_AES128, _AES256)),
        cipher=_AES128,
    ),
    Scenario("valid tls config yml with all curves", "web_config_noAuth_allCurves.good.yml", _TLS),
    Scenario(
        "valid tls config yml with some curves",
        "web_config_noAuth_someCurves.good.yml",
        Client(tls=True, curve="secp521r1"),
    ),
    Scenario(
        "valid tls config yml with no common curves",
        "web_config_noAuth_someCurves.good.yml",
        Client(tls=True, curve="secp384r1"),
        "no connection",
    ),
    Scenario(
        "valid tls config yml with non-http2 ciphers", "web_config_noAuth_noHTTP2.good.yml", _TLS
    ),
    Scenario(
        "valid tls config yml with non-http2 ciphers but http2 enabled",
        "web_config_noAuth_noHTTP2Cipher.bad.yml",
        _TLS,
        "start refused: No HTTP2 cipher",
    ),
    Scenario("valid headers config", "web_config_headers.good.yml"),
    Scenario(
        "invalid X-Content-Type-Options headers config",
        "web_config_headers_content_type_options.bad.yml",
        Client(),
        "start refused: Invalid value",
    ),
    Scenario(
        "invalid X-Frame-Options headers config",
        "web_config_headers_frame_options.bad.yml",
        Client(),
        "start refused: Invalid value",
    ),
    Scenario(
        "HTTP header that can not be overridden",
        "web_config_headers_extra_header.bad.yml",
        Client(),
        "start refused: Invalid header",
    ),
    Scenario(
        "valid tls config yml and tls client with RequireAnyClientCert (present certificate)",
        "tls_config_noAuth.requireanyclientcert.good.yml",
        Client(tls=True, cert="self-signed"),
    ),
    Scenario(
        "valid tls config yml (cert from file, key inline)"
        " and tls client with RequireAnyClientCert (present certificate)",
        "tls_config_noAuth.requireanyclientcert.good.yml",
        Client(tls=True, cert="self-signed"),
    ),
    Scenario(
        "valid tls config yml and tls client with RequireAndVerifyClientCert (present certificate)",
        "tls_config_noAuth.requireandverifyclientcert.good.yml",
        Client(tls=True, cert="self-signed"),
    ),
    Scenario(
        "valid tls config yml"
        " and tls client with VerifyPeerCertificate (present good SAN DNS entry)",
        "web_config_auth_client_san.good.yaml",
        Client(tls=True, cert="sans"),
    ),
    Scenario(
        "valid tls config yml"
        " and tls client with VerifyPeerCertificate (present invalid SAN DNS entries)",
        "web_config_auth_client_san.bad.yaml",
        Client(tls=True, cert="sans"),
        "no connection",
    ),
    Scenario(
        "valid rate limiter (no rate limiter set up) that doesn't block",
        "web_config_rate_limiter_nonblocking.yaml",
        Client(requests=10),
    ),
    Scenario(
        "valid rate limiter with an interval of one second",
        "web_config_rate_limiter_one_second.yaml",
        Client(requests=10),
        "status 429",
    ),
    # TestUsers
    Scenario("without basic auth", _USERS_PLAIN, Client(), "status 401"),
    Scenario("with correct basic auth", _USERS_PLAIN, Client(user="dave")),
    Scenario("without basic auth and TLS", _USERS, _TLS, "status 401"),
    Scenario("with correct basic auth and TLS", _USERS, Client(tls=True, user="dave")),
    Scenario("with another correct basic auth and TLS", _USERS, Client(tls=True, user="carol")),
    Scenario(
        "with bad password and TLS",
        _USERS,
        Client(tls=True, user="dave", password="bad"),
        "status 401",
    ),
    Scenario(
        "with bad username and TLS",
        _USERS,
        Client(tls=True, user="nonexistent", password="nonexistent"),
        "status 401",
    ),
    # TestConfigReloading
    Scenario(
        "config reloading",
        "web_config_noAuth.good.blocking.yml",
        expect="no connection, then ok",
        run=_config_reloading,
    ),
    # handler_test.go
    Scenario("TestBasicAuthCache", _USERS_PLAIN, run=_cache),
    Scenario(
        "TestBasicAuthWithFakepassword",
        _USERS_PLAIN,
        expect="status 401, status 401",
        run=_fake_password,
    ),
    Scenario("TestByPassBasicAuthVuln", _USERS_PLAIN, expect="status 401, status 401", run=_bypass),
    Scenario("TestHTTPHeaders", "web_config_headers.good.yml", run=_headers),
]

# What cannot apply to aiohttp, which serves HTTP/1.1 only: documented in docs/security.md.
HTTP2_SCENARIOS = {"valid tls config yml with non-http2 ciphers but http2 enabled"}
