"""TLS on a listener, for real over loopback: Python's ssl and ``openssl s_client`` as clients.

Servers are wired as exporter.app wires them (tests/webconfig_server.py); each case loads a
fixture of tests/testdata/webconfig/.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from exporter.web.certnames import subject_alt_names
from tests.conftest import require_binary
from tests.pki import Pki, make_pki
from tests.test_webconfig import TESTDATA, render
from tests.webconfig_server import Served, client_tls, get, refused, s_client, serve

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@contextmanager
def serving(pki: Pki, fixture: str) -> Iterator[Served]:
    with serve(render(TESTDATA / fixture, pki.folder)) as served:
        yield served


def test_tls_is_served_and_plain_http_gets_gos_400(pki: Pki) -> None:
    with serving(pki, "tls_require_any.yml") as served:
        assert served.url.startswith("https://")
    with serving(pki, "users_over_tls.yml") as served:
        reply = get(served.url, client_tls(pki.ca), auth=("dave", "dave-pw"))
        assert (reply.status, reply.tls_version, reply.text) == (200, "TLSv1.3", "Hello World!")
        plain = httpx.get(served.url.replace("https://", "http://"))
        assert (plain.status_code, plain.text) == (
            400,
            "Client sent an HTTP request to an HTTPS server.\n",
        )
        assert refused(served.url, ssl.create_default_context())  # an issuer it does not trust


def test_tls_client_to_a_plain_listener_fails(pki: Pki) -> None:
    with serving(pki, "users_plain_http.yml") as served:
        assert refused(served.url.replace("http://", "https://"), client_tls(pki.ca))


def test_min_and_max_version(pki: Pki) -> None:
    with serving(pki, "tls_some_curves.yml") as served:  # min_version: TLS13
        assert refused(served.url, client_tls(pki.ca, max_version=TLS12))
        assert get(served.url, client_tls(pki.ca)).tls_version == "TLSv1.3"
        assert s_client(served.url, pki.ca, "-tls1_2").returncode != 0
        assert s_client(served.url, pki.ca, "-tls1_3").answered
    with serving(pki, "tls_some_ciphers.yml") as served:  # max_version: TLS12
        assert refused(served.url, client_tls(pki.ca, min_version=TLS13))
        assert get(served.url, client_tls(pki.ca)).tls_version == "TLSv1.2"
    with serving(pki, "users_over_tls.yml") as served:  # the default minimum is TLS 1.2
        assert refused(served.url, client_tls(pki.ca, max_version=ssl.TLSVersion.TLSv1_1))


def test_tls_1_1_is_served_when_the_file_asks_for_it(pki: Pki) -> None:
    with serving(pki, "tls_legacy_versions.yml") as served:
        legacy = client_tls(
            pki.ca, min_version=ssl.TLSVersion.TLSv1, max_version=ssl.TLSVersion.TLSv1_1
        )
        assert get(served.url, legacy).tls_version == "TLSv1.1"
        assert refused(served.url, client_tls(pki.ca, min_version=TLS12))
        assert s_client(served.url, pki.ca, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0").answered


def test_min_version_above_max_refuses_every_handshake(pki: Pki) -> None:
    with serving(pki, "tls_min_above_max.yml") as served:
        assert refused(served.url, client_tls(pki.ca))


def test_cipher_suites_restrict_and_order_tls12(pki: Pki) -> None:
    aes128, aes256 = "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384"
    with serving(pki, "tls_some_ciphers.yml") as served:  # [AES128, AES256], TLS 1.2 only
        assert get(served.url, client_tls(pki.ca, ciphers=f"{aes128}:{aes256}")).cipher == aes128
        # prefer_server_cipher_suites defaults to true: the file's order wins.
        assert get(served.url, client_tls(pki.ca, ciphers=f"{aes256}:{aes128}")).cipher == aes128
        assert refused(served.url, client_tls(pki.ca, ciphers="ECDHE-RSA-AES256-SHA"))
        assert s_client(served.url, pki.ca, "-cipher", "ECDHE-RSA-CHACHA20-POLY1305").returncode
    with serving(pki, "tls_some_ciphers_client_order.yml") as served:  # [AES256, AES128]
        # prefer_server_cipher_suites: false: the client's order wins.
        assert get(served.url, client_tls(pki.ca, ciphers=f"{aes128}:{aes256}")).cipher == aes128
        assert get(served.url, client_tls(pki.ca, ciphers=f"{aes256}:{aes128}")).cipher == aes256


def test_only_tls13_suites_refuse_tls12_clients(pki: Pki) -> None:
    with serving(pki, "tls_only_tls13_ciphers.yml") as served:
        assert refused(served.url, client_tls(pki.ca, max_version=TLS12))
        assert get(served.url, client_tls(pki.ca)).tls_version == "TLSv1.3"


def test_default_tls12_ciphers_are_gos(pki: Pki) -> None:
    with serving(pki, "users_over_tls.yml") as served:
        tls12 = client_tls(pki.ca, max_version=TLS12)
        assert (
            get(served.url, tls12, auth=("dave", "dave-pw")).cipher == "ECDHE-RSA-AES128-GCM-SHA256"
        )
        # Go offers ECDHE with AES-CBC-SHA; Python's default server list does not.
        cbc = client_tls(pki.ca, max_version=TLS12, ciphers="ECDHE-RSA-AES256-SHA")
        assert get(served.url, cbc, auth=("dave", "dave-pw")).status == 200
        assert refused(
            served.url, client_tls(pki.ca, max_version=TLS12, ciphers="DHE-RSA-AES128-GCM-SHA256")
        )


@pytest.mark.parametrize(
    ("curve", "openssl_group"),
    [("prime256v1", "P-256"), ("secp384r1", "P-384"), ("secp521r1", "P-521"), ("X25519", "X25519")],
)
def test_every_listed_curve_is_offered(pki: Pki, curve: str, openssl_group: str) -> None:
    with serving(pki, "tls_all_curves.yml") as served:
        assert get(served.url, client_tls(pki.ca, curve=curve)).status == 200
        assert s_client(served.url, pki.ca, "-groups", openssl_group).answered


def test_one_curve(pki: Pki) -> None:
    with serving(pki, "tls_one_curve.yml") as served:
        assert get(served.url, client_tls(pki.ca, curve="secp384r1")).status == 200
        assert refused(served.url, client_tls(pki.ca, curve="X25519"))


def test_curves_not_listed_are_refused(pki: Pki) -> None:
    with serving(pki, "tls_some_curves.yml") as served:  # CurveP521, X25519
        assert get(served.url, client_tls(pki.ca, curve="secp521r1")).status == 200
        assert get(served.url, client_tls(pki.ca, curve="X25519")).status == 200
        assert refused(served.url, client_tls(pki.ca, curve="secp384r1"))
        assert s_client(served.url, pki.ca, "-groups", "P-256").returncode != 0


def test_require_any_client_cert_accepts_any_and_refuses_none(pki: Pki) -> None:
    with serving(pki, "tls_require_any.yml") as served:
        assert get(served.url, client_tls(pki.ca, pki.self_signed)).status == 200
        assert get(served.url, client_tls(pki.ca, pki.client)).status == 200
        assert refused(served.url, client_tls(pki.ca))
        key = ("-cert", str(pki / "self-signed.crt"), "-key", str(pki / "self-signed.key"))
        assert s_client(served.url, pki.ca, *key).answered
        assert not s_client(served.url, pki.ca).answered
    with serving(pki, "tls_require_any_inline_key.yml") as served:
        assert get(served.url, client_tls(pki.ca, pki.sans)).status == 200


def test_request_client_cert_accepts_with_or_without(pki: Pki) -> None:
    with serving(pki, "tls_request_client_cert.yml") as served:
        assert get(served.url, client_tls(pki.ca)).status == 200
        assert get(served.url, client_tls(pki.ca, pki.self_signed)).status == 200


def test_verify_client_cert_if_given(pki: Pki) -> None:
    with serving(pki, "tls_verify_if_given.yml") as served:  # no client CA: the system's CAs
        assert get(served.url, client_tls(pki.ca)).status == 200
        assert refused(served.url, client_tls(pki.ca, pki.client))


def test_require_and_verify_client_cert(pki: Pki) -> None:
    with serving(pki, "tls_require_and_verify.yml") as served:
        assert get(served.url, client_tls(pki.ca, pki.client)).status == 200
        assert refused(served.url, client_tls(pki.ca))
        assert refused(served.url, client_tls(pki.ca, pki.self_signed))
        cert = ("-cert", str(pki / "client.crt"), "-key", str(pki / "client.key"))
        assert s_client(served.url, pki.ca, *cert).answered
        assert not s_client(served.url, pki.ca).answered
    with serving(pki, "tls_inline_client_ca.yml") as served:
        assert get(served.url, client_tls(pki.ca, pki.client)).status == 200
    with serving(pki, "tls_require_and_verify_self_signed.yml") as served:
        assert get(served.url, client_tls(pki.ca, pki.self_signed)).status == 200
        assert refused(served.url, client_tls(pki.ca, pki.client))
    with serving(pki, "tls_client_ca_file_without_certificates.yml") as served:
        assert refused(served.url, client_tls(pki.ca, pki.client))


def test_client_allowed_sans(pki: Pki) -> None:
    sans_cert = ("-cert", str(pki / "sans.crt"), "-key", str(pki / "sans.key"))
    with serving(pki, "tls_client_allowed_sans.yml") as served:
        assert get(served.url, client_tls(pki.ca, pki.sans)).status == 200
        assert s_client(served.url, pki.ca, *sans_cert).answered
    with serving(pki, "tls_client_allowed_sans_unmatched.yml") as served:
        # The handshake completes (the certificate verifies), then the connection closes
        # before any HTTP is read: no status, no body.
        assert refused(served.url, client_tls(pki.ca, pki.sans))
        unmatched = s_client(served.url, pki.ca, *sans_cert)
        assert "HTTP/1.1" not in unmatched.output
    with serving(pki, "tls_client_allowed_sans_any_client_cert.yml") as served:  # IP SANs
        assert get(served.url, client_tls(pki.ca, pki.sans)).status == 200
        assert refused(served.url, client_tls(pki.ca, pki.self_signed))  # no SAN at all
        assert refused(served.url, client_tls(pki.ca))  # no certificate
    with serving(pki, "tls_client_allowed_sans_without_client_auth.yml") as served:
        assert get(served.url, client_tls(pki.ca)).status == 200  # ignored, with a warning


def test_inline_certificate_and_key(pki: Pki) -> None:
    with serving(pki, "tls_inline.yml") as served:
        reply = get(served.url, client_tls(pki.ca))
        assert reply.status == 200
        assert reply.peer_cert == ssl.PEM_cert_to_DER_cert(pki.server_crt.read_text())


def test_tls_settings_without_a_certificate_serve_plain_http(pki: Pki) -> None:
    with serving(pki, "tls_settings_without_certificate.yml") as served:
        assert served.url.startswith("http://")
        assert get(served.url).status == 200


def test_certificate_rotation_serves_the_new_file_to_the_next_connection(
    pki: Pki, tmp_path: Path
) -> None:
    """In-process; tests/test_web_live.py does it on a real process, with SIGHUP too."""
    other = make_pki(tmp_path / "other")
    conf = tmp_path / "conf"
    conf.mkdir()
    for name in ("server.crt", "server.key"):
        shutil.copy(pki / name, conf / name)
    web = conf / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    both = client_tls(pki.ca)
    both.load_verify_locations(other.ca)
    old_der = ssl.PEM_cert_to_DER_cert(pki.server_crt.read_text())
    new_der = ssl.PEM_cert_to_DER_cert(other.server_crt.read_text())
    with serve(web) as served, httpx.Client(verify=both) as kept:
        assert kept.get(served.url).status_code == 200  # a kept-alive connection, old cert
        shutil.copy(other.server_crt, conf / "server.crt")  # new cert, old key: does not load
        assert get(served.url, both).peer_cert == old_der
        assert served.live is not None and served.live._failed is not None
        shutil.copy(other.server_key, conf / "server.key")
        assert get(served.url, both).peer_cert == new_der
        assert kept.get(served.url).status_code == 200  # the open connection was not dropped
        assert subject_alt_names(new_der) == ["localhost", "127.0.0.1"]


# --- The documented examples ------------------------------------------------------------------

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"


def promtool_check(folder: Path) -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "web-config", "web-config.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "web-config.yml SUCCESS" in result.stdout + result.stderr


def test_example_web_config_passes_promtool_and_serves(tmp_path: Path, pki: Pki) -> None:
    example = EXAMPLES / "web-config.yml"
    user, password = "prometheus", "demo-scrape-password"  # as documented in the example
    assert f'"{user}" with the password "{password}"' in example.read_text()
    shutil.copy(example, tmp_path / "web-config.yml")
    for name in ("server.crt", "server.key"):
        shutil.copy(pki / name, tmp_path / name)
    promtool_check(tmp_path)
    with serve(tmp_path / "web-config.yml") as served:
        assert get(served.url, client_tls(pki.ca), auth=(user, password)).status == 200
        assert get(served.url, client_tls(pki.ca), auth=(user, "guess")).status == 401


def test_example_mtls_web_config_passes_promtool_and_serves(tmp_path: Path, pki: Pki) -> None:
    shutil.copy(EXAMPLES / "web-config-mtls.yml", tmp_path / "web-config.yml")
    for name in ("ca.crt", "server.crt", "server.key"):
        shutil.copy(pki / name, tmp_path / name)
    promtool_check(tmp_path)
    with serve(tmp_path / "web-config.yml") as served:
        reply = get(served.url, client_tls(pki.ca, pki.client))
        assert (reply.status, reply.tls_version) == (200, "TLSv1.3")
        assert reply.headers["Strict-Transport-Security"] == "max-age=31536000"
        assert refused(served.url, client_tls(pki.ca))
        assert refused(served.url, client_tls(pki.ca, pki.self_signed))
