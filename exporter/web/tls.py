"""TLS for the listeners: the exporter-toolkit's ``tls_server_config`` on Python's ``ssl``.

:func:`build_ssl_context` is the toolkit's ``ConfigToTLSConfig``: the same checks in the same
order (certificate and key present, files readable, the pair loadable, the client CA file
readable, a known ``client_auth_type``, a client CA only with a policy that asks for a client
certificate), then an ``SSLContext`` that behaves like Go's ``tls.Config`` as far as OpenSSL
allows. Where it cannot, or where Go itself surprises, the difference is listed here and in
docs/security.md:

- ``client_auth_type``: ``RequestClientCert`` and ``RequireAnyClientCert`` (alias
  ``RequireClientCert``) request a certificate and accept any, through a verify callback
  (exporter/web/openssl.py). ``VerifyClientCertIfGiven`` and ``RequireAndVerifyClientCert``
  verify against ``client_ca_file``/``client_ca``, or, when neither is set, against the
  system's trusted CAs, as Go does (a warning says so).
- ``client_allowed_sans``: checked when the handshake completes and before any byte of HTTP
  is read (exporter/web/listener.py), for every policy that requests a certificate; a client
  that sends none is refused (the toolkit drops such a connection too). Go checks inside the
  handshake and sends an alert; here the connection is closed instead. Ignored, with a
  warning, under ``NoClientCert``, where no certificate is requested.
- ``min_version``/``max_version``: TLS 1.0 and 1.1 are served when asked for, by lowering
  OpenSSL's security level to 0 for that listener (OpenSSL 3 refuses them at any higher
  level), with a warning. ``min_version`` above ``max_version`` loads, as in Go, and every
  handshake then fails.
- ``cipher_suites``: the names Go's ``tls.CipherSuites()`` returns (Go 1.25; the RSA key
  exchange suites that older Go and promtool 2.42 accept are insecure ones now, and refused).
  Unset, TLS 1.2 offers Go's default list. Go ignores the order of the list and
  ``prefer_server_cipher_suites`` since Go 1.17; here the file's order is the server's
  preference when ``prefer_server_cipher_suites`` is true (the default). TLS 1.3 suites are
  always on in both; a list of only TLS 1.3 suites leaves TLS 1.2 clients without a cipher,
  in both.
- ``curve_preferences``: every curve listed is offered, in order (OpenSSL groups).
- Inline ``cert``/``key``: Python loads certificates from files only, so the PEM goes through
  an anonymous in-memory file (memfd) that never touches the disk.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from exporter.config import Secret
from exporter.web import openssl

# client_auth_type values -> the Go policy they select ("" is the default, NoClientCert).
CLIENT_AUTH_TYPES: Mapping[str, str] = MappingProxyType(
    {
        "": "NoClientCert",
        "NoClientCert": "NoClientCert",
        "RequestClientCert": "RequestClientCert",
        "RequireAnyClientCert": "RequireAnyClientCert",
        "RequireClientCert": "RequireAnyClientCert",  # the toolkit's old name, still accepted
        "VerifyClientCertIfGiven": "VerifyClientCertIfGiven",
        "RequireAndVerifyClientCert": "RequireAndVerifyClientCert",
    }
)
_POLICY_NAMES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
# policy -> (verify_mode, verified against a CA)
_POLICIES = {
    "NoClientCert": (ssl.CERT_NONE, False),
    "RequestClientCert": (ssl.CERT_OPTIONAL, False),
    "RequireAnyClientCert": (ssl.CERT_REQUIRED, False),
    "VerifyClientCertIfGiven": (ssl.CERT_OPTIONAL, True),
    "RequireAndVerifyClientCert": (ssl.CERT_REQUIRED, True),
}

TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")
_LEGACY_VERSIONS = ("TLS10", "TLS11")

# Go's tls.CipherSuites() names (all the toolkit accepts) -> OpenSSL names; None marks the
# TLS 1.3 suites, which neither Go nor Python's ssl lets a server configure.
CIPHER_SUITES: Mapping[str, str | None] = MappingProxyType(
    {
        "TLS_AES_128_GCM_SHA256": None,
        "TLS_AES_256_GCM_SHA384": None,
        "TLS_CHACHA20_POLY1305_SHA256": None,
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
    }
)
# What Go offers for TLS 1.0-1.2 when cipher_suites is not set, in Go's preference order.
GO_DEFAULT_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA"
)
# Go's HTTP/2 server refuses a cipher list without one of these (unless http2 is off).
HTTP2_REQUIRED_CIPHERS = (
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
)
# SSL_OP_PRIORITIZE_CHACHA: with server preference, move ChaCha20 first for clients that put
# it first (no AES hardware), which is how Go orders its default list.
_OP_PRIORITIZE_CHACHA = 1 << 21

# Go curve names -> OpenSSL short names (what set_ecdh_curve and the groups list both take).
CURVES: Mapping[str, str] = MappingProxyType(
    {
        "CurveP256": "prime256v1",
        "CurveP384": "secp384r1",
        "CurveP521": "secp521r1",
        "X25519": "X25519",
    }
)

_PEM_CERTIFICATE = re.compile(
    r"-----BEGIN CERTIFICATE-----\s.*?-----END CERTIFICATE-----", re.DOTALL
)


class TLSConfigError(Exception):
    """A tls_server_config that cannot be served; ``key`` names the field ("" for the section)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class TLSSettings:
    """tls_server_config as written (paths already resolved against the file's folder);
    checked by :func:`build_ssl_context`, in the toolkit's order."""

    cert_file: Path | None = None
    key_file: Path | None = None
    cert: str = ""  # inline PEM
    key: Secret | None = None  # inline PEM
    client_auth_type: str = ""
    client_ca_file: Path | None = None
    client_ca: str = ""  # inline PEM
    client_allowed_sans: tuple[str, ...] | None = None  # None: not checked
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True
    curve_preferences: tuple[str, ...] = ()

    @property
    def files(self) -> tuple[Path, ...]:
        """The files the context is built from, to notice when they change."""
        paths = (self.cert_file, self.key_file, self.client_ca_file)
        return tuple(p for p in paths if p is not None)

    @property
    def policy(self) -> str:
        return CLIENT_AUTH_TYPES.get(self.client_auth_type, "")

    @property
    def requests_client_cert(self) -> bool:
        return self.policy not in ("", "NoClientCert")


class _EncryptedKey(Exception):
    pass


def _refuse_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal and hang a service start.
    raise _EncryptedKey


def _ssl_reason(err: ssl.SSLError) -> str:
    return err.reason or re.sub(r"\s*\(_ssl\.c:\d+\)$", "", str(err.args[-1]))


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise TLSConfigError(key, f"cannot read '{path}': {err.strerror}") from None


@contextlib.contextmanager
def _as_files(*blobs: bytes) -> Iterator[list[str]]:
    """File names that read back `blobs`, for load_cert_chain, which takes names only.

    Anonymous in-memory files (memfd) where the system has them, so a key given inline never
    touches the disk; otherwise files in a private temporary folder, removed at once.
    """
    with contextlib.ExitStack() as stack:
        names = _memory_files(stack, blobs)
        if names is None:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="deepseek-exporter-"))
            names = []
            for index, blob in enumerate(blobs):
                name = os.path.join(folder, f"{index}.pem")
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(blob)
                names.append(name)
        yield names


def _memory_files(stack: contextlib.ExitStack, blobs: tuple[bytes, ...]) -> list[str] | None:
    try:
        names = []
        for blob in blobs:
            fd = os.memfd_create("deepseek-exporter-pem", os.MFD_CLOEXEC)
            stack.callback(os.close, fd)
            with os.fdopen(os.dup(fd), "wb") as out:
                out.write(blob)
            names.append(f"/proc/self/fd/{fd}")
    except (AttributeError, OSError):  # no memfd_create on this system
        return None
    return names if all(os.path.exists(name) for name in names) else None


def _load_key_pair(ctx: ssl.SSLContext, tls: TLSSettings) -> None:
    """The toolkit's loadCert: read cert_file (or cert), then key_file (or key), then the pair."""
    cert_key, key_key = ("cert_file", "key_file")
    if tls.cert_file is not None:
        cert_pem = _read("cert_file", tls.cert_file)
        cert_where = f"'{tls.cert_file}'"
    else:
        cert_pem, cert_key, cert_where = tls.cert.encode(), "cert", "the inline cert"
    if tls.key_file is not None:
        key_pem = _read("key_file", tls.key_file)
        key_where = f"'{tls.key_file}'"
    else:
        assert tls.key is not None
        key_pem, key_key, key_where = tls.key.reveal().encode(), "key", "the inline key"
    try:
        # Parsing it as a CA bundle tells "not a certificate" apart from "bad key", which
        # load_cert_chain reports alike as "PEM lib".
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=cert_pem.decode("ascii", "replace")
        )
    except ssl.SSLError:
        raise TLSConfigError(cert_key, f"no PEM certificate in {cert_where}") from None
    try:
        with _as_files(cert_pem, key_pem) as (cert_name, key_name):
            ctx.load_cert_chain(cert_name, key_name, password=_refuse_passphrase)
    except _EncryptedKey:
        raise TLSConfigError(
            key_key,
            f"{key_where} is passphrase-protected; store it decrypted"
            " (openssl pkey -in KEY -out KEY.plain) with tight permissions",
        ) from None
    except ssl.SSLError as err:
        if err.reason in ("KEY_VALUES_MISMATCH", "KEY_TYPE_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            msg = f"{key_where} does not match the certificate in {cert_where}"
        else:
            reason = _ssl_reason(err)
            # "PEM lib" is all OpenSSL says for "this is not a key"; it adds nothing.
            detail = "" if "PEM lib" in reason else f" ({reason})"
            msg = f"no usable PEM private key in {key_where}{detail}"
        raise TLSConfigError(key_key, msg) from None


def _load_client_cas(ctx: ssl.SSLContext, pem: bytes) -> int:
    """Load every certificate of a PEM bundle, skipping what does not parse (like Go's
    AppendCertsFromPEM); the number loaded."""
    loaded = 0
    for block in _PEM_CERTIFICATE.findall(pem.decode("ascii", "replace")):
        try:
            ctx.load_verify_locations(cadata=block)
        except ssl.SSLError:
            continue
        loaded += 1
    return loaded


def _only_tls13_suites(tls: TLSSettings) -> bool:
    return bool(tls.cipher_suites) and not any(CIPHER_SUITES[c] for c in tls.cipher_suites)


def _set_versions(ctx: ssl.SSLContext, tls: TLSSettings) -> None:
    versions = {
        "TLS10": ssl.TLSVersion.TLSv1,
        "TLS11": ssl.TLSVersion.TLSv1_1,
        "TLS12": ssl.TLSVersion.TLSv1_2,
        "TLS13": ssl.TLSVersion.TLSv1_3,
    }
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1; the file asked for them, and a warning says so.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = versions[tls.min_version]
        ctx.maximum_version = versions[tls.max_version]
    if _only_tls13_suites(tls):
        # Only TLS 1.3 suites listed: like Go, TLS 1.2 then has no cipher to agree on.
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3


def _set_ciphers(ctx: ssl.SSLContext, tls: TLSSettings) -> None:
    names = [n for n in (CIPHER_SUITES[name] for name in tls.cipher_suites) if n]
    if names:
        ciphers = ":".join(dict.fromkeys(names))
    else:
        ciphers = GO_DEFAULT_CIPHERS
        ctx.options |= _OP_PRIORITIZE_CHACHA
    if tls.min_version in _LEGACY_VERSIONS:
        ciphers += ":@SECLEVEL=0"
    ctx.set_ciphers(ciphers)
    if tls.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE


def _set_curves(ctx: ssl.SSLContext, tls: TLSSettings, warnings_out: list[str]) -> None:
    groups = list(dict.fromkeys(CURVES[c] for c in tls.curve_preferences))
    if len(groups) == 1:
        ctx.set_ecdh_curve(groups[0])
    elif groups:
        try:
            openssl.set_groups(ctx, groups)
        except openssl.OpenSSLUnavailable as err:
            ctx.set_ecdh_curve(groups[0])
            warnings_out.append(
                f"tls_server_config.curve_preferences: only {tls.curve_preferences[0]} is "
                f"offered: {err}"
            )


def build_ssl_context(tls: TLSSettings, warnings_out: list[str] | None = None) -> ssl.SSLContext:
    """A server context from the files as they are now; raises TLSConfigError naming the key.

    Problems that do not stop the listener (as they do not stop a Go exporter) are appended
    to `warnings_out` as one-line messages.
    """
    notes: list[str] = [] if warnings_out is None else warnings_out
    if tls.cert_file is None and not tls.cert:
        raise TLSConfigError("", "missing one of cert or cert_file")
    if tls.key_file is None and tls.key is None:
        raise TLSConfigError("", "missing one of key or key_file")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_RENEGOTIATION  # Go servers never renegotiate
    _load_key_pair(ctx, tls)
    _set_versions(ctx, tls)
    _set_ciphers(ctx, tls)
    _set_curves(ctx, tls, notes)

    ca_key = "client_ca_file" if tls.client_ca_file is not None else "client_ca"
    ca_pem: bytes | None = None
    if tls.client_ca_file is not None:
        ca_pem = _read("client_ca_file", tls.client_ca_file)
    elif tls.client_ca:
        ca_pem = tls.client_ca.encode()

    policy = CLIENT_AUTH_TYPES.get(tls.client_auth_type)
    if policy is None:
        raise TLSConfigError(
            "client_auth_type",
            f"invalid value {tls.client_auth_type!r} (one of {', '.join(_POLICY_NAMES)})",
        )
    if ca_pem is not None and policy == "NoClientCert":
        raise TLSConfigError(
            ca_key,
            "set but client_auth_type is NoClientCert, so no client certificate would be "
            "requested (use RequireAndVerifyClientCert)",
        )

    verify_mode, verifies = _POLICIES[policy]
    if ca_pem is not None and _load_client_cas(ctx, ca_pem) == 0 and verifies:
        notes.append(
            f"tls_server_config.{ca_key}: no PEM certificate in it, so no client certificate "
            "will verify"
        )
    if ca_pem is None and verifies:
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        notes.append(
            f"tls_server_config: {policy} without client_ca_file: client certificates are "
            "verified against the system's trusted CAs, as Go does"
        )
    ctx.verify_mode = verify_mode
    if verify_mode != ssl.CERT_NONE and not verifies:
        try:
            openssl.accept_any_certificate(ctx)
        except openssl.OpenSSLUnavailable as err:
            raise TLSConfigError(
                "client_auth_type",
                f"{tls.client_auth_type} needs OpenSSL's verify callback, which cannot be "
                f"reached from this Python: {err}",
            ) from None

    if tls.client_allowed_sans is not None and not tls.requests_client_cert:
        notes.append(
            "tls_server_config.client_allowed_sans: ignored, client_auth_type "
            f"{policy} requests no client certificate"
        )
    if tls.min_version in _LEGACY_VERSIONS:
        notes.append(
            f"tls_server_config.min_version: {tls.min_version} is served by lowering OpenSSL's "
            "security level to 0 for this listener"
        )
    if TLS_VERSIONS.index(tls.min_version) > TLS_VERSIONS.index(tls.max_version):
        notes.append(
            f"tls_server_config: min_version {tls.min_version} is above max_version "
            f"{tls.max_version}: every handshake will fail, as in the toolkit"
        )
    elif _only_tls13_suites(tls) and tls.min_version != "TLS13":
        notes.append(
            "tls_server_config.cipher_suites: lists only TLS 1.3 suites, so TLS 1.2 "
            "clients have no cipher to agree on, as in the toolkit"
        )
    return ctx
