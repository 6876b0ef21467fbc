"""The Prometheus exporter-toolkit web config file (TLS, basic auth, headers, rate limit).

Format: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md,
the file every Go exporter reads with ``--web.config.file``. No Python library implements it,
so this module does, to accept and refuse exactly what the current toolkit does, with an
error naming the same problem, found in the same order:

1. the YAML, read as go-yaml v2 reads it into the toolkit's Go types (exporter/web/goyaml.py:
   unknown keys, wrong types, unknown cipher, curve or TLS version names);
2. the headers (only the five the toolkit allows, with its enumerations);
3. each user's bcrypt hash, checked as Go's ``bcrypt.Cost`` checks it;
4. TLS, when the section names a certificate, key, client CA or client auth type
   (exporter/web/tls.py: certificate and key present, files readable and loadable, client CA
   readable, a known ``client_auth_type``, a client CA only with a policy that uses it).

The toolkit also accepts some files that cannot work as written (a user name with ``:``, a
hash no bcrypt can check, a rate limit with ``burst: 0``, TLS settings without a
certificate); those load here too, and each gives a warning (``WebSettings.warnings``) that
the listener logs.

Wiring: exporter/web/listener.py keeps one listener's file current (TLS context for new
connections, basic auth, headers, rate limit), reloading it when it or its certificate files
change. HTTP/2 (``http2``) is validated and ignored: aiohttp serves HTTP/1.1.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import NoReturn

from exporter.config import Secret  # the project-wide "prints as <secret>" wrapper
from exporter.web import goyaml
from exporter.web.auth import bcrypt_cost_problem, bcrypt_parses
from exporter.web.goyaml import GoTypeError, Node
from exporter.web.tls import (
    CIPHER_SUITES,
    CURVES,
    HTTP2_REQUIRED_CIPHERS,
    TLS_VERSIONS,
    TLSConfigError,
    TLSSettings,
    build_ssl_context,
)

__all__ = ["RateLimit", "Secret", "TLSSettings", "WebConfigError", "WebSettings", "load_web_config"]


class WebConfigError(Exception):
    """A web config file that cannot be used; the message is one line naming file and field."""


# The only headers the toolkit lets a file set, with the values it allows (None: any).
HEADERS: Mapping[str, tuple[str, ...] | None] = MappingProxyType(
    {
        "Strict-Transport-Security": None,
        "X-Content-Type-Options": ("nosniff",),
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-XSS-Protection": None,
        "Content-Security-Policy": None,
    }
)

_TOP_KEYS = ("tls_server_config", "http_server_config", "rate_limit", "basic_auth_users")
_TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "cipher_suites",
    "curve_preferences",
    "min_version",
    "max_version",
    "prefer_server_cipher_suites",
    "client_allowed_sans",
)
# Any of these set (non-empty) turns TLS on, as the toolkit's TLSConfig.IsEnabled.
_TLS_ENABLING = ("cert_file", "cert", "key_file", "key", "client_ca_file", "client_ca")
_HTTP_KEYS = ("http2", "headers")
_RATE_KEYS = ("interval", "burst")


@dataclass(frozen=True)
class RateLimit:
    """A token bucket per listener: one request per `interval` seconds, bursts of `burst`."""

    interval: float
    burst: int


@dataclass(frozen=True)
class WebSettings:
    """A validated web config file. Hashes are wrapped in Secret, so repr() never shows them."""

    path: Path
    tls: TLSSettings | None = None
    http2: bool = True
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    basic_auth_users: Mapping[str, Secret] = field(default_factory=lambda: MappingProxyType({}))
    rate_limit: RateLimit | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def ssl_context(self, warnings_out: list[str] | None = None) -> ssl.SSLContext | None:
        """A server SSLContext from the files as they are now; None when TLS is off."""
        if self.tls is None:
            return None
        try:
            return build_ssl_context(self.tls, warnings_out)
        except TLSConfigError as err:
            where = f"tls_server_config.{err.key}" if err.key else "tls_server_config"
            raise WebConfigError(f"{self.path}: {where}: {err}") from None


# --- Reading -----------------------------------------------------------------------------


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.warnings: list[str] = []

    def fail(self, where: str, message: str) -> NoReturn:
        prefix = f"{self.path}: {where}: " if where else f"{self.path}: "
        raise WebConfigError(prefix + message)

    @contextlib.contextmanager
    def at(self, where: str) -> Iterator[None]:
        """Report a value the Go type cannot hold as a problem of the field `where`."""
        try:
            yield
        except GoTypeError as err:
            self.fail(where, str(err))

    def section(self, where: str, node: Node | None, known: tuple[str, ...]) -> dict[str, Node]:
        with self.at(where):
            section = goyaml.as_mapping(node)
        for key in section:
            if key not in known:
                self.fail(where, f"unknown key {key!r} (one of {', '.join(known)})")
        return section

    def string(self, where: str, node: Node | None) -> str:
        with self.at(where):
            return goyaml.as_string(node)

    def choice(self, where: str, node: Node | None, what: str, known: tuple[str, ...]) -> str:
        name = self.string(where, node)
        if name not in known:
            self.fail(where, f"unknown {what} {name!r} (one of {', '.join(known)})")
        return name

    def choices(
        self, where: str, node: Node | None, what: str, known: tuple[str, ...]
    ) -> tuple[str, ...]:
        with self.at(where):
            items = goyaml.as_list(node) or []
        return tuple(
            self.choice(f"{where}[{i}]", item, what, known) for i, item in enumerate(items)
        )

    def file(self, where: str, node: Node | None) -> Path | None:
        value = self.string(where, node)
        return self.path.parent / value if value else None  # "" means unset, as in Go

    # --- 1. the document, as go-yaml fills the toolkit's structs ---

    def document(self, root: Node | None) -> WebSettings:
        if root is not None and not isinstance(root, dict):
            self.fail("", f"expected a mapping, got {goyaml.kind(root)}")
        top = self.section("", root, _TOP_KEYS)
        tls = self.tls(self.section("tls_server_config", top.get("tls_server_config"), _TLS_KEYS))
        http = self.section("http_server_config", top.get("http_server_config"), _HTTP_KEYS)
        with self.at("http_server_config.http2"):
            http2 = goyaml.as_bool(http.get("http2"), default=True)
        with self.at("http_server_config.headers"):
            raw_headers = goyaml.as_mapping(http.get("headers"))
        headers = {
            name: self.string(f"http_server_config.headers.{name}", value)
            for name, value in raw_headers.items()
        }
        rate_limit = self.rate_limit(self.section("rate_limit", top.get("rate_limit"), _RATE_KEYS))
        with self.at("basic_auth_users"):
            raw_users = goyaml.as_mapping(top.get("basic_auth_users"))
        users = {
            user: self.string(f"basic_auth_users.{user}", hashed)
            for user, hashed in raw_users.items()
        }
        # 2. headers and 3. users are checked once the whole document has been read.
        checked_headers = self.headers(headers)
        checked_users = self.users(users)
        if tls is not None and http2 and tls.cipher_suites:
            self.http2_ciphers(tls)
        return WebSettings(
            path=self.path,
            tls=tls,
            http2=http2,
            headers=MappingProxyType(checked_headers),
            basic_auth_users=MappingProxyType(checked_users),
            rate_limit=rate_limit,
            warnings=tuple(self.warnings),
        )

    def tls(self, tls: dict[str, Node]) -> TLSSettings | None:
        where = "tls_server_config"
        files = {
            key: self.file(f"{where}.{key}", tls.get(key))
            for key in ("cert_file", "key_file", "client_ca_file")
        }
        inline = {
            key: self.string(f"{where}.{key}", tls.get(key)) for key in ("cert", "key", "client_ca")
        }
        client_auth_type = self.string(f"{where}.client_auth_type", tls.get("client_auth_type"))
        versions = {}
        for key, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
            node = tls.get(key)
            if node is None or (isinstance(node, goyaml.Scalar) and node.is_null):
                versions[key] = default  # Go's zero value selects its default, TLS 1.2 / 1.3
            else:
                versions[key] = self.choice(f"{where}.{key}", node, "TLS version", TLS_VERSIONS)
        ciphers = self.choices(
            f"{where}.cipher_suites", tls.get("cipher_suites"), "cipher", tuple(CIPHER_SUITES)
        )
        curves = self.choices(
            f"{where}.curve_preferences", tls.get("curve_preferences"), "curve", tuple(CURVES)
        )
        with self.at(f"{where}.prefer_server_cipher_suites"):
            prefer = goyaml.as_bool(tls.get("prefer_server_cipher_suites"), default=True)
        with self.at(f"{where}.client_allowed_sans"):
            sans_items = goyaml.as_list(tls.get("client_allowed_sans"))
        sans = None
        if sans_items is not None:
            sans = tuple(
                self.string(f"{where}.client_allowed_sans[{i}]", item)
                for i, item in enumerate(sans_items)
            )

        if not (any(files.values()) or any(inline.values()) or client_auth_type):
            if tls:
                self.warnings.append(
                    f"{where}: no certificate, key, client CA or client_auth_type, so the "
                    "listener serves plain HTTP (as the toolkit does)"
                )
            return None
        for key, other in (
            ("cert", "cert_file"),
            ("key", "key_file"),
            ("client_ca", "client_ca_file"),
        ):
            if inline[key] and files[other] is not None:
                self.warnings.append(f"{where}: both {key} and {other} are set; {other} is used")
        return TLSSettings(
            cert_file=files["cert_file"],
            key_file=files["key_file"],
            cert="" if files["cert_file"] else inline["cert"],
            key=Secret(inline["key"]) if inline["key"] and not files["key_file"] else None,
            client_auth_type=client_auth_type,
            client_ca_file=files["client_ca_file"],
            client_ca="" if files["client_ca_file"] else inline["client_ca"],
            client_allowed_sans=sans,
            min_version=versions["min_version"],
            max_version=versions["max_version"],
            cipher_suites=ciphers,
            prefer_server_cipher_suites=prefer,
            curve_preferences=curves,
        )

    def rate_limit(self, section: dict[str, Node]) -> RateLimit | None:
        with self.at("rate_limit.interval"):
            interval = goyaml.as_duration(section.get("interval"))
        with self.at("rate_limit.burst"):
            burst = goyaml.as_int(section.get("burst"))
        if interval == 0:
            return None  # the toolkit's "0 disables the rate limiter"
        if interval < 0:
            self.warnings.append("rate_limit.interval: negative, so nothing is limited (as in Go)")
        elif burst <= 0:
            self.warnings.append(
                f"rate_limit.burst: {burst}, so every request is answered 429 (as in the toolkit)"
            )
        return RateLimit(interval=interval, burst=burst)

    # --- 2. headers ---

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        where = "http_server_config.headers"
        checked: dict[str, str] = {}
        for name, value in headers.items():
            if name not in HEADERS:
                self.fail(
                    where, f"header {name!r} cannot be configured (one of {', '.join(HEADERS)})"
                )
            allowed = HEADERS[name]
            if allowed is not None and value not in allowed:
                self.fail(
                    f"{where}.{name}", f"invalid value {value!r} (one of {', '.join(allowed)})"
                )
            if value:  # "Unset if blank", per the format's documentation
                # Go writes a line break in a header value as a space; so does this.
                checked[name] = value.replace("\r", " ").replace("\n", " ")
        return checked

    # --- 3. users ---

    def users(self, users: dict[str, str]) -> dict[str, Secret]:
        checked: dict[str, Secret] = {}
        for user, hashed in users.items():
            where = f"basic_auth_users.{user}"
            problem = bcrypt_cost_problem(hashed)  # never quotes the value: it may be a password
            if problem:
                self.fail(where, f"{problem} (make one with: htpasswd -nBC 10 USER)")
            if ":" in user:
                self.warnings.append(
                    f"basic_auth_users: user name {user!r} contains ':', which basic auth "
                    "cannot send, so this user can never log in"
                )
            elif not bcrypt_parses(hashed):
                self.warnings.append(
                    f"{where}: not a hash bcrypt can check, so this user can never log in"
                )
            checked[user] = Secret(hashed)
        return checked

    def http2_ciphers(self, tls: TLSSettings) -> None:
        if TLS_VERSIONS.index(tls.min_version) >= TLS_VERSIONS.index("TLS13"):
            return
        if not any(c in HTTP2_REQUIRED_CIPHERS for c in tls.cipher_suites):
            self.warnings.append(
                "tls_server_config.cipher_suites: Go exporters refuse to start with this list "
                "unless http2 is false (HTTP/2 requires TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 "
                "or TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256); ignored here, where HTTP/2 is not "
                "served"
            )


def _parse(path: Path) -> WebSettings:
    """Steps 1-3: the file itself, without reading the certificate files."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise WebConfigError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"{path}: not UTF-8 text") from None
    try:
        root = goyaml.load(text)
    except GoTypeError as err:
        raise WebConfigError(f"{path}: {err}") from None
    return _Parser(path).document(root)


def load_web_config_parts(
    path: str | Path,
) -> tuple[WebSettings, tuple[Path, ...], Callable[[list[str]], ssl.SSLContext | None]]:
    """The file read and checked (steps 1-3), the certificate files it names, and the step
    that reads those and builds the TLS context (None without TLS), appending its warnings.

    Apart so that a caller watching the files for changes can look at them before they are
    read (exporter/web/listener.py).
    """
    settings = _parse(Path(path))
    files = settings.tls.files if settings.tls is not None else ()
    return settings, files, settings.ssl_context


def load_web_config(path: str | Path) -> WebSettings:
    """Read, validate and return a web config file; any problem raises WebConfigError.

    The certificate, key and client CA are read and checked too, so a bad file is refused at
    start-up (and at reload) rather than at the first connection. Problems the toolkit lets
    through are in the result's ``warnings``.
    """
    settings, _, build = load_web_config_parts(path)
    tls_warnings: list[str] = []
    build(tls_warnings)  # 4. reads and checks the certificate, key and client CA
    return replace(settings, warnings=(*settings.warnings, *tls_warnings))
