"""TLS for the listeners: the exporter-toolkit's TLS vocabulary mapped onto Python's ``ssl``.

What differs from Go's crypto/tls is described in :mod:`exporter.web.webconfig`.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

CLIENT_AUTH_TYPES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
VERIFYING_AUTH_TYPES = {
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}

TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")
# TLS 1.0/1.1 map to 1.2: see the module docstring (OpenSSL 3 refuses them anyway, and the
# ssl.TLSVersion members for them are deprecated).
TLS_VERSION_FLOOR = {
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


class TLSFileError(Exception):
    """A certificate, key or CA file that cannot be used; ``key`` is its config key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


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
        raise TLSFileError(key, f"cannot read '{path}': {err.strerror}") from None


def build_ssl_context(tls: TLSSettings) -> ssl.SSLContext:
    """A server context from the files as they are now; raises TLSFileError naming the key."""
    cert_pem = _read("cert_file", tls.cert_file)
    _read("key_file", tls.key_file)
    try:
        # Parsing it as a CA bundle tells "not a certificate" apart from "bad key", which
        # load_cert_chain reports alike as "PEM lib".
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(
            cadata=cert_pem.decode("ascii", "replace")
        )
    except ssl.SSLError:
        raise TLSFileError("cert_file", f"no PEM certificate in '{tls.cert_file}'") from None

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = TLS_VERSION_FLOOR[tls.min_version]
    ctx.maximum_version = TLS_VERSION_FLOOR[tls.max_version]
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
        raise TLSFileError(
            "key_file",
            f"'{tls.key_file}' is passphrase-protected; store it decrypted"
            " (openssl pkey -in KEY -out KEY.plain) with tight permissions",
        ) from None
    except ssl.SSLError as err:
        if err.reason == "KEY_VALUES_MISMATCH":
            msg = f"'{tls.key_file}' does not match the certificate in '{tls.cert_file}'"
        else:
            reason = _ssl_reason(err)
            # "PEM lib" is all OpenSSL says for "this is not a key"; it adds nothing.
            detail = "" if "PEM lib" in reason else f" ({reason})"
            msg = f"no usable PEM private key in '{tls.key_file}'{detail}"
        raise TLSFileError("key_file", msg) from None

    if tls.client_ca_file is not None:
        # Loaded (so checked) even for RequestClientCert, where it only matters to Go.
        _read("client_ca_file", tls.client_ca_file)
        try:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
        except ssl.SSLError:
            raise TLSFileError(
                "client_ca_file", f"no PEM certificate in '{tls.client_ca_file}'"
            ) from None
    ctx.verify_mode = VERIFYING_AUTH_TYPES.get(tls.client_auth_type, ssl.CERT_NONE)
    return ctx
