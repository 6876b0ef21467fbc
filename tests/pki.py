"""Certificates for the TLS tests, made at test time with the openssl CLI (nothing committed).

One folder holds every file the web config fixtures name, under the same names, so a fixture
copied next to them loads as written:

- ``ca.crt``/``ca.key``: the CA that issued the server and client certificates;
- ``server.crt``/``server.key``: RSA, for localhost and 127.0.0.1 (RSA, like the toolkit's
  own, so its ``TLS_ECDHE_RSA_*`` cipher cases apply);
- ``client.crt``/``client.key``: a client certificate issued by the CA;
- ``self-signed.crt``/``.key``: a client certificate nobody issued (CA:TRUE, so it can also
  serve as its own client CA, as in the toolkit's RequireAndVerifyClientCert case);
- ``sans.crt``/``.key``: self-signed, with DNS, e-mail, URI and IP SANs;
- ``other.key``: a key that belongs to no certificate; ``encrypted.key``: passphrase-protected;
- ``not-a-cert.pem``: text; ``empty.pem``: nothing.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require_binary

SANS = ("scraper.example", "ops@scraper.example", "spiffe://example.org/prometheus", "10.1.2.3")


@dataclass(frozen=True)
class Pki:
    folder: Path

    def __truediv__(self, name: str) -> Path:
        return self.folder / name

    @property
    def server_crt(self) -> Path:
        return self.folder / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    @property
    def client(self) -> tuple[Path, Path]:
        return self.folder / "client.crt", self.folder / "client.key"

    @property
    def self_signed(self) -> tuple[Path, Path]:
        return self.folder / "self-signed.crt", self.folder / "self-signed.key"

    @property
    def sans(self) -> tuple[Path, Path]:
        return self.folder / "sans.crt", self.folder / "sans.key"


def make_pki(folder: Path) -> Pki:
    openssl = require_binary("openssl")
    folder.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=folder)

    def req(name: str, subject: str, key: list[str], *extra: str) -> None:
        run("req", "-x509", *key, "-nodes", "-days", "2", "-subj", subject, *extra,
            "-keyout", f"{name}.key", "-out", f"{name}.crt")  # fmt: skip

    by_ca = ["-CA", "ca.crt", "-CAkey", "ca.key"]
    leaf = "basicConstraints=critical,CA:FALSE"
    req("ca", "/CN=deepseek-exporter test CA", ec, "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    req("server", "/CN=localhost", ["-newkey", "rsa:2048"], *by_ca, "-addext", leaf,
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-addext", "extendedKeyUsage=serverAuth")  # fmt: skip
    req("client", "/CN=prometheus", ec, *by_ca, "-addext", leaf,
        "-addext", "extendedKeyUsage=clientAuth")  # fmt: skip
    req("self-signed", "/CN=self-signed client", ec, "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "extendedKeyUsage=clientAuth")  # fmt: skip
    dns, email, uri, ip = SANS
    names = f"subjectAltName=DNS:{dns},email:{email},URI:{uri},IP:{ip},IP:2001:db8::7"
    req("sans", "/CN=client with names", ec, "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "extendedKeyUsage=clientAuth", "-addext", names)  # fmt: skip
    run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "other.key")
    run("pkey", "-in", "client.key", "-aes256", "-passout", "pass:secret", "-out", "encrypted.key")
    (folder / "not-a-cert.pem").write_text("This is not a PEM certificate.\n")
    (folder / "empty.pem").write_text("")
    return Pki(folder)
