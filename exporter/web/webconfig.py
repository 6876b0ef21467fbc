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

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import ssl
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import bcrypt
import yaml
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from exporter.config import Secret  # the project-wide "prints as <secret>" wrapper

__all__ = ["BasicAuth", "Secret", "TLSSettings", "WebConfigError", "WebSettings", "load_web_config"]

log = logging.getLogger(__name__)


class WebConfigError(Exception):
    """A web config file that cannot be used; the message is one line naming file and field."""


# --- The vocabulary of the format --------------------------------------------------------

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_VERIFYING_AUTH_TYPES = {
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}

TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")
# TLS 1.0/1.1 map to 1.2: see the module docstring (OpenSSL 3 refuses them anyway, and the
# ssl.TLSVersion members for them are deprecated).
_TLS_VERSION_FLOOR = {
    "TLS10": ssl.TLSVersion.TLSv1_2,
    "TLS11": ssl.TLSVersion.TLSv1_2,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's tls.CipherSuites() names (what the toolkit accepts) -> OpenSSL names. None marks the
# TLS 1.3 suites, which neither Go nor Python's ssl lets a server configure.
CIPHER_SUITES: Mapping[str, str | None] = MappingProxyType(
    {
        "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
        "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
        "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
        "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_AES_128_GCM_SHA256": None,
        "TLS_AES_256_GCM_SHA384": None,
        "TLS_CHACHA20_POLY1305_SHA256": None,
    }
)

# Go curve names -> OpenSSL group names.
CURVES: Mapping[str, str] = MappingProxyType(
    {
        "CurveP256": "prime256v1",
        "CurveP384": "secp384r1",
        "CurveP521": "secp521r1",
        "X25519": "X25519",
    }
)

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
# bcrypt only ever uses the first 72 bytes of a password (Go and htpasswd silently
# truncate; the Python package raises instead), so the same truncation is done here.
_BCRYPT_MAX_PASSWORD = 72
AUTH_CACHE_SIZE = 1024


# --- Settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()


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
        return _build_ssl_context(str(self.path), self.tls)

    def auth_middleware(self, for_proxy: bool = False) -> Middleware:
        """Basic auth (when users are configured) and the configured headers, as one middleware.

        Each call builds its own cache of successful checks, so a reloaded file starts clean.
        ``for_proxy``: on the metering proxy ``Authorization`` carries the DeepSeek key, so the
        credentials travel in ``Proxy-Authorization`` and a refusal is a 407.
        """
        credentials = hdrs.PROXY_AUTHORIZATION if for_proxy else hdrs.AUTHORIZATION
        status, challenge = (
            (407, hdrs.PROXY_AUTHENTICATE) if for_proxy else (401, hdrs.WWW_AUTHENTICATE)
        )
        headers = dict(self.headers)
        auth = BasicAuth(self.basic_auth_users) if self.basic_auth_users else None

        if auth is None and not headers:

            @web.middleware
            async def passthrough(request: web.Request, handler: Handler) -> web.StreamResponse:
                return await handler(request)

            return passthrough

        @web.middleware
        async def web_config(request: web.Request, handler: Handler) -> web.StreamResponse:
            if auth is not None and not await auth.check_header(request.headers.get(credentials)):
                response: web.StreamResponse = web.Response(
                    status=status,
                    text="Unauthorized\n",
                    headers={challenge: 'Basic realm="deepseek-exporter"'},
                )
            else:
                try:
                    response = await handler(request)
                except web.HTTPException as exc:
                    # 404/405 from the router and handlers' HTTP errors arrive as exceptions.
                    _add_headers(exc.headers, headers)
                    raise
            if not response.prepared:
                _add_headers(response.headers, headers)
            return response

        return web_config


def _add_headers(target: Any, headers: Mapping[str, str]) -> None:
    # The handler's own value wins, as in the Go toolkit (which sets them before the handler).
    for name, value in headers.items():
        target.setdefault(name, value)


# --- Basic auth ----------------------------------------------------------------------------


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    """One bcrypt comparison (constant time inside bcrypt). Tests count calls to this."""
    return bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed)


def _normalise_hash(hashed: str) -> bytes:
    # $2y$ (htpasswd, PHP) is the same algorithm as $2b$. The installed bcrypt reads both,
    # but that is not promised for every release the dependency range allows, so rewrite it.
    if hashed.startswith("$2y$"):
        hashed = "$2b$" + hashed[4:]
    return hashed.encode("ascii")


def _dummy_hash(cost: int) -> bytes:
    """A valid hash of a random password at `cost`, cheap to make (computed at cost 4)."""
    cheap = bcrypt.hashpw(base64.b64encode(bcrypt.gensalt()), bcrypt.gensalt(4))
    return cheap[:4] + b"%02d" % cost + cheap[6:]


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, caching successes."""

    def __init__(self, users: Mapping[str, Secret], cache_size: int = AUTH_CACHE_SIZE) -> None:
        self._users = {user: _normalise_hash(h.reveal()) for user, h in users.items()}
        # Unknown users are checked against a hash as slow as the slowest real one, so
        # response time does not reveal which user names exist.
        self._dummy = _dummy_hash(max(int(h[4:6]) for h in self._users.values()))
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        # One bcrypt at a time, as the Go toolkit does: a burst of bad logins then costs one
        # core, not the whole thread pool. Cached successes never wait for it.
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"BasicAuth(users={sorted(self._users)}, cached={len(self._cache)})"

    async def check_header(self, header: str | None) -> bool:
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        return await self.check(*credentials)

    async def check(self, user: str, password: bytes) -> bool:
        known = user in self._users
        hashed = self._users[user] if known else self._dummy
        key = _cache_key(user, password, hashed)
        if known and key in self._cache:
            self._cache.move_to_end(key)
            return True
        async with self._lock:
            try:
                ok = await asyncio.to_thread(_bcrypt_check, password, hashed)
            except ValueError:
                # Hashes are validated at load time; this is a bug, not a bad login.
                log.exception("basic auth: bcrypt refused the hash of user %r", user)
                ok = False
        if not (ok and known):
            return False  # failures are never cached: the next attempt pays bcrypt again
        self._cache[key] = None
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return True


def _cache_key(user: str, password: bytes, hashed: bytes) -> bytes:
    # Length-prefixed so no two (user, password, hash) triples share a key; hashed so the
    # cache never holds a password.
    digest = hashlib.sha256()
    for part in (user.encode(), password, hashed):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        user, sep, password = decoded.partition(b":")
        if not sep:
            return None
        return user.decode("utf-8"), password
    except (binascii.Error, UnicodeDecodeError):
        return None


# --- TLS -----------------------------------------------------------------------------------


class _EncryptedKey(Exception):
    pass


def _refuse_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang a service start.
    raise _EncryptedKey


def _ssl_reason(err: ssl.SSLError) -> str:
    return err.reason or re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(err.args[-1]))


def _read(where: str, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise WebConfigError(
            f"{where}: tls_server_config.{key}: cannot read '{path}': {err.strerror}"
        ) from None


def _build_ssl_context(where: str, tls: TLSSettings) -> ssl.SSLContext:
    cert_pem = _read(where, "cert_file", tls.cert_file)
    _read(where, "key_file", tls.key_file)
    try:
        # Parsing it as a CA bundle tells "not a certificate" apart from "bad key", which
        # load_cert_chain reports alike as "PEM lib".
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=cert_pem.decode("ascii", "replace")
        )
    except ssl.SSLError:
        raise WebConfigError(
            f"{where}: tls_server_config.cert_file: no PEM certificate in '{tls.cert_file}'"
        ) from None

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSION_FLOOR[tls.min_version]
    ctx.maximum_version = _TLS_VERSION_FLOOR[tls.max_version]
    tls12 = [n for n in (CIPHER_SUITES[name] for name in tls.cipher_suites) if n]
    if tls12:
        ctx.set_ciphers(":".join(dict.fromkeys(tls12)))
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if tls.curve_preferences:
        ctx.set_ecdh_curve(CURVES[tls.curve_preferences[0]])

    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_passphrase)
    except _EncryptedKey:
        raise WebConfigError(
            f"{where}: tls_server_config.key_file: '{tls.key_file}' is passphrase-protected;"
            " store it decrypted (openssl pkey -in KEY -out KEY.plain) with tight permissions"
        ) from None
    except ssl.SSLError as err:
        if err.reason == "KEY_VALUES_MISMATCH":
            msg = f"'{tls.key_file}' does not match the certificate in '{tls.cert_file}'"
        else:
            reason = _ssl_reason(err)
            # "PEM lib" is all OpenSSL says for "this is not a key"; it adds nothing.
            detail = "" if "PEM lib" in reason else f" ({reason})"
            msg = f"no usable PEM private key in '{tls.key_file}'{detail}"
        raise WebConfigError(f"{where}: tls_server_config.key_file: {msg}") from None

    if tls.client_ca_file is not None:
        # Loaded (so checked) even for RequestClientCert, where it only matters to Go.
        _read(where, "client_ca_file", tls.client_ca_file)
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError:
            raise WebConfigError(
                f"{where}: tls_server_config.client_ca_file: "
                f"no PEM certificate in '{tls.client_ca_file}'"
            ) from None
    ctx.verify_mode = _VERIFYING_AUTH_TYPES.get(tls.client_auth_type, ssl.CERT_NONE)
    return ctx


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
        if client_ca_file is None and client_auth in _VERIFYING_AUTH_TYPES:
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
            if not match or not 4 <= int(match[1]) <= 31 or not _bcrypt_parses(hashed):
                self.fail(
                    f"{where}.{user}",
                    "not a valid bcrypt hash (expected $2a$, $2b$ or $2y$ with a cost of "
                    "04-31; make one with: htpasswd -nBC 10 USER)",
                )
        return users


def _bcrypt_parses(hashed: str) -> bool:
    """Whether bcrypt accepts the salt, tried at cost 4 (about a millisecond)."""
    cheap = _normalise_hash(hashed)
    try:
        bcrypt.checkpw(b"", cheap[:4] + b"04" + cheap[6:])
    except ValueError:
        return False
    return True


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
