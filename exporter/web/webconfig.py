"""The Prometheus exporter-toolkit web config file (TLS, basic auth, headers), for aiohttp.

Format: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md,
the file every Go exporter reads with ``--web.config.file`` and ``promtool check web-config``
validates. No Python library implements it, so this module does, as strictly as the Go
toolkit (unknown keys, wrong types and bad values are refused) and stricter where a silent
mistake would leave the listener less secure than the file says.

Wiring::

    settings = load_web_config(path)           # refuses a bad file at start-up
    ssl_context = settings.ssl_context()       # None when there is no tls_server_config
    app.middlewares.append(settings.auth_middleware())

What is honoured, and where Python's ``ssl`` module (OpenSSL) differs from Go's crypto/tls:

- ``cert_file``/``key_file``/``client_ca_file``: relative paths resolve against the folder of
  the config file; all three are read and checked at load time. Passphrase-protected keys
  are refused (Go cannot read them either; OpenSSL would otherwise prompt on the terminal).
- ``client_auth_type``: ``NoClientCert`` and ``RequestClientCert`` let every client in (the
  latter asks Go to request a certificate it never checks; nothing here reads an unchecked
  certificate, so it is not requested). ``VerifyClientCertIfGiven`` and
  ``RequireAndVerifyClientCert`` verify against ``client_ca_file``, which is required for
  them. ``RequireAnyClientCert`` (and its old alias ``RequireClientCert``) is refused:
  OpenSSL through Python cannot demand a certificate without verifying it.
- ``min_version``/``max_version``: OpenSSL 3 does not negotiate TLS 1.0/1.1 at the security
  level Python uses, so ``min_version: TLS10``/``TLS11`` acts as TLS12 and a ``max_version``
  below TLS12 is refused.
- ``cipher_suites``: the Go names Go accepts; the TLS 1.2 ones map to their OpenSSL names,
  in the order given. TLS 1.3 suites cannot be configured (same as Go) and are accepted as
  no-ops. ``prefer_server_cipher_suites`` (default true) picks the server's order.
- ``curve_preferences``: Python's ``ssl`` can set a single ECDH group, so only the FIRST
  (most preferred) curve is offered; with several listed a warning is logged. Offering fewer
  curves than listed is never weaker than the file asks for.
- ``http2``: validated, not used: aiohttp serves HTTP/1.1 only.
- ``headers``: the five headers the toolkit allows, with its enum checks, added to every
  response the handlers return (401 and 404 included) unless the handler set them itself. A
  response a handler streams itself (``prepare()``-d before it returns, like the metering
  proxy's pass-through) is already on the wire and goes out as the handler built it.
- ``basic_auth_users``: bcrypt hashes (``$2a$``, ``$2b$``, ``$2y$``). Checks run in a worker
  thread, one at a time (bcrypt is slow on purpose), successful ones are cached, and an
  unknown user costs a bcrypt check against a dummy hash so it cannot be told from a wrong
  password by timing.
- Not supported, refused with a message saying so: inline ``cert``/``key``/``client_ca``,
  ``client_allowed_sans`` and ``rate_limit`` (newer toolkit keys that promtool 2.42 itself
  rejects).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import yaml
from aiohttp.typedefs import Middleware

from exporter.config import Secret  # the project-wide "prints as <secret>" wrapper
from exporter.web.auth import BasicAuth, bcrypt_parses, web_middleware
from exporter.web.tls import (
    CIPHER_SUITES,
    CLIENT_AUTH_TYPES,
    CURVES,
    TLS_VERSIONS,
    VERIFYING_AUTH_TYPES,
    TLSFileError,
    TLSSettings,
    build_ssl_context,
)

__all__ = ["BasicAuth", "Secret", "TLSSettings", "WebConfigError", "WebSettings", "load_web_config"]

log = logging.getLogger(__name__)


class WebConfigError(Exception):
    """A web config file that cannot be used; the message is one line naming file and field."""


# --- The vocabulary of the format (TLS names: exporter.web.tls) ---------------------------

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

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
_HTTP_KEYS = ("http2", "headers")
# Keys of newer toolkit versions: named so the error says "not supported", not "unknown".
_UNSUPPORTED_KEYS = {
    "rate_limit": "not supported by this exporter; rate-limit in a reverse proxy",
    "tls_server_config.cert": "inline PEM is not supported; use cert_file",
    "tls_server_config.key": "inline PEM is not supported; use key_file",
    "tls_server_config.client_ca": "inline PEM is not supported; use client_ca_file",
    "tls_server_config.client_allowed_sans": (
        "not supported: Python's ssl module cannot check client certificate SANs during the "
        "handshake; issue client certificates from a dedicated client_ca_file instead"
    ),
}

# bcrypt's modular crypt format: $2<minor>$<cost>$<22 chars salt><31 chars digest>.
_BCRYPT_RE = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


# --- Settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class WebSettings:
    """A validated web config file. Hashes are wrapped in Secret, so repr() never shows them."""

    path: Path
    tls: TLSSettings | None = None
    http2: bool = True
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    basic_auth_users: Mapping[str, Secret] = field(default_factory=lambda: MappingProxyType({}))

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server SSLContext from the files as they are now; None without tls_server_config."""
        if self.tls is None:
            return None
        try:
            return build_ssl_context(self.tls)
        except TLSFileError as err:
            raise WebConfigError(f"{self.path}: tls_server_config.{err.key}: {err}") from None

    def auth_middleware(self, for_proxy: bool = False) -> Middleware:
        """Basic auth and headers of this file as one middleware (see :func:`web_middleware`)."""
        return web_middleware(self.basic_auth_users, self.headers, for_proxy)


# --- Loading -------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML keeps the last one silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            hash(key)
        except TypeError:
            raise yaml.MarkedYAMLError(
                problem="a mapping key must be a plain value", problem_mark=key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.MarkedYAMLError(
                problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, message: str) -> NoReturn:
        prefix = f"{self.path}: {where}: " if where else f"{self.path}: "
        raise WebConfigError(prefix + message)

    def expect(self, where: str, value: object, kind: type, what: str | None = None) -> Any:
        # bool is an int subclass in Python, YAML keeps them apart.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.fail(where, f"expected {what or _TYPE_NAMES[kind]}, got {_type_name(value)}")
        return value

    def section(self, where: str, value: object, known: tuple[str, ...]) -> dict[str, Any]:
        """A mapping with only known keys; null is an empty section."""
        if value is None:
            return {}
        section = self.expect(where, value, dict)
        for key in section:
            name = f"{where}.{key}" if where else str(key)
            if name in _UNSUPPORTED_KEYS:
                self.fail(name, _UNSUPPORTED_KEYS[name])
            if key not in known:
                self.fail(where, f"unknown key {key!r} (one of {', '.join(known)})")
        return section

    def choice(self, where: str, value: object, choices: tuple[str, ...]) -> str:
        self.expect(where, value, str)
        if value not in choices:
            self.fail(where, f"unknown value {value!r} (one of {', '.join(choices)})")
        return str(value)

    def file(self, where: str, value: object) -> Path:
        self.expect(where, value, str)
        if not value:
            self.fail(where, "must not be empty")
        return self.path.parent / str(value)

    def string_list(self, where: str, value: object, choices: tuple[str, ...]) -> tuple[str, ...]:
        if value is None:
            return ()
        items = self.expect(where, value, list)
        return tuple(self.choice(f"{where}[{i}]", item, choices) for i, item in enumerate(items))

    # --- sections ---

    def document(self, raw: object) -> WebSettings:
        top = self.section("", raw, _TOP_KEYS)  # an empty file is valid: plain HTTP, no auth
        http = self.section("http_server_config", top.get("http_server_config"), _HTTP_KEYS)
        http2 = self.expect("http_server_config.http2", http.get("http2", True), bool)
        return WebSettings(
            path=self.path,
            tls=self.tls(top.get("tls_server_config")),
            http2=http2,
            headers=MappingProxyType(self.headers(http.get("headers"))),
            basic_auth_users=MappingProxyType(self.users(top.get("basic_auth_users"))),
        )

    def tls(self, raw: object) -> TLSSettings | None:
        where = "tls_server_config"
        tls = self.section(where, raw, _TLS_KEYS)
        if not tls:
            return None  # an empty section means plain HTTP, as in the Go toolkit
        if "cert_file" not in tls and "key_file" not in tls:
            self.fail(where, "cert_file and key_file are required to serve TLS")
        if "cert_file" not in tls:
            self.fail(f"{where}.cert_file", "missing (key_file is set without it)")
        if "key_file" not in tls:
            self.fail(f"{where}.key_file", "missing (cert_file is set without it)")
        cert_file = self.file(f"{where}.cert_file", tls["cert_file"])
        key_file = self.file(f"{where}.key_file", tls["key_file"])

        auth_where = f"{where}.client_auth_type"
        raw_auth = tls.get("client_auth_type", "NoClientCert")
        if raw_auth in ("RequireAnyClientCert", "RequireClientCert"):
            self.fail(
                auth_where,
                f"{raw_auth} is not supported: Python's ssl module cannot require a client "
                "certificate without verifying it; use RequireAndVerifyClientCert with "
                "client_ca_file",
            )
        client_auth = self.choice(auth_where, raw_auth, CLIENT_AUTH_TYPES)
        client_ca = tls.get("client_ca_file")
        client_ca_file = (
            None if client_ca is None else self.file(f"{where}.client_ca_file", client_ca)
        )
        if client_ca_file is None and client_auth in VERIFYING_AUTH_TYPES:
            self.fail(f"{where}.client_ca_file", f"required when client_auth_type is {client_auth}")
        if client_ca_file is not None and client_auth == "NoClientCert":
            self.fail(
                f"{where}.client_ca_file",
                "set but client_auth_type is NoClientCert, so no client certificate would be "
                "checked (use RequireAndVerifyClientCert)",
            )

        min_version = self.choice(
            f"{where}.min_version", tls.get("min_version", "TLS12"), TLS_VERSIONS
        )
        max_version = self.choice(
            f"{where}.max_version", tls.get("max_version", "TLS13"), TLS_VERSIONS
        )
        if max_version in ("TLS10", "TLS11"):
            self.fail(
                f"{where}.max_version",
                f"{max_version} is not supported: OpenSSL 3 does not negotiate TLS below 1.2 "
                "at Python's security level",
            )
        if TLS_VERSIONS.index(min_version) > TLS_VERSIONS.index(max_version):
            self.fail(where, f"min_version {min_version} is above max_version {max_version}")

        ciphers = self.string_list(
            f"{where}.cipher_suites", tls.get("cipher_suites"), tuple(CIPHER_SUITES)
        )
        if ciphers and min_version != "TLS13" and not any(CIPHER_SUITES[c] for c in ciphers):
            self.fail(
                f"{where}.cipher_suites",
                "lists only TLS 1.3 suites, which are always on and cannot be configured, "
                "leaving TLS 1.2 without a cipher; add TLS 1.2 suites or set min_version: TLS13",
            )
        prefer = self.expect(
            f"{where}.prefer_server_cipher_suites",
            tls.get("prefer_server_cipher_suites", True),
            bool,
        )
        curves = self.string_list(
            f"{where}.curve_preferences", tls.get("curve_preferences"), tuple(CURVES)
        )
        if len(curves) > 1:
            log.warning(
                "%s: tls_server_config.curve_preferences: Python's ssl offers one curve; "
                "using %s only",
                self.path,
                curves[0],
            )
        return TLSSettings(
            cert_file=cert_file,
            key_file=key_file,
            client_auth_type=client_auth,
            client_ca_file=client_ca_file,
            min_version=min_version,
            max_version=max_version,
            cipher_suites=ciphers,
            prefer_server_cipher_suites=prefer,
            curve_preferences=curves,
        )

    def headers(self, raw: object) -> dict[str, str]:
        where = "http_server_config.headers"
        headers: dict[str, str] = {}
        for name, value in self.section(where, raw, tuple(HEADERS)).items():
            self.expect(f"{where}.{name}", value, str)
            allowed = HEADERS[name]
            if allowed is not None and value not in allowed:
                self.fail(
                    f"{where}.{name}", f"unknown value {value!r} (one of {', '.join(allowed)})"
                )
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                # A newline here would let the file inject headers of its own choosing.
                self.fail(f"{where}.{name}", "must not contain control characters")
            if value:  # "Unset if blank", per the format's documentation
                headers[name] = value
        return headers

    def users(self, raw: object) -> dict[str, Secret]:
        where = "basic_auth_users"
        if raw is None:
            return {}
        users: dict[str, Secret] = {}
        for user, hashed in self.expect(where, raw, dict).items():
            if not isinstance(user, str):
                self.fail(where, f"user name {user!r} must be a string (quote it)")
            if ":" in user:
                self.fail(where, f"user name {user!r} contains ':', which basic auth cannot send")
            # Only the type, never the value: this may be a real hash or a pasted password.
            self.expect(f"{where}.{user}", hashed, str, "a bcrypt hash string")
            users[user] = Secret(hashed)
            match = _BCRYPT_RE.fullmatch(hashed)
            if not match or not 4 <= int(match[1]) <= 31 or not bcrypt_parses(hashed):
                self.fail(
                    f"{where}.{user}",
                    "not a valid bcrypt hash (expected $2a$, $2b$ or $2y$ with a cost of "
                    "04-31; make one with: htpasswd -nBC 10 USER)",
                )
        return users


def _yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_web_config(path: str | Path) -> WebSettings:
    """Read, validate and return a web config file; any problem raises WebConfigError.

    The certificate, key and client CA files are read and checked too, so a bad file is
    refused at start-up (and at reload) rather than at the first connection.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise WebConfigError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"{path}: not UTF-8 text") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as err:
        raise WebConfigError(f"{path}: {_yaml_error(err)}") from None
    settings = _Parser(path).document(raw)
    settings.ssl_context()  # reads and checks the certificate, key and CA files
    return settings
