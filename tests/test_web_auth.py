"""Basic auth, headers and the rate limit of a web config, served for real over loopback."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from exporter.config import Secret
from exporter.web import auth as web_auth
from exporter.web.auth import BasicAuth, BcryptLanes
from exporter.web.listener import LiveWebConfig
from tests.conftest import FakeClock, require_binary
from tests.pki import Pki, make_pki
from tests.test_webconfig import TESTDATA, render
from tests.webconfig_server import client_tls, get, serve

ALICE, BOB, DAVE = ("alice", "alice-pw"), ("bob", "bob-pw"), ("dave", "dave-pw")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


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


@pytest.fixture
def users_over_tls(pki: Pki) -> Iterator[str]:
    with serve(render(TESTDATA / "users_over_tls.yml", pki.folder)) as served:
        yield served.url


def test_basic_auth_right_wrong_missing_unknown(
    users_over_tls: str, pki: Pki, bcrypt_calls: list[bytes]
) -> None:
    url, tls = users_over_tls, client_tls(pki.ca)
    assert get(url, tls, auth=ALICE).status == 200  # an htpasswd $2y$ hash
    assert get(url, tls, auth=BOB).status == 200
    for auth in (("alice", "bob-pw"), ("mallory", "alice-pw"), None):
        reply = get(url, tls, auth=auth)
        assert reply.status == 401, auth
        assert reply.headers["WWW-Authenticate"].startswith("Basic")
    for header in ("Bearer x", "Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode()):
        assert get(url, tls, headers={"Authorization": header}).status == 401
    # An unknown user costs one check against a cost-10 hash, as in the toolkit; malformed
    # headers cost none.
    assert len(bcrypt_calls) == 4
    assert bcrypt_calls[3][:7] == b"$2b$10$"
    assert bcrypt_calls[3] not in (bcrypt_calls[0], bcrypt_calls[1])


def test_successes_are_cached_and_failures_are_not(
    users_over_tls: str, pki: Pki, bcrypt_calls: list[bytes]
) -> None:
    url, tls = users_over_tls, client_tls(pki.ca)
    for _ in range(3):
        assert get(url, tls, auth=ALICE).status == 200
    assert len(bcrypt_calls) == 1
    for _ in range(2):
        assert get(url, tls, auth=("alice", "wrong")).status == 401
        assert get(url, tls, auth=("nobody", "alice-pw")).status == 401
    assert len(bcrypt_calls) == 5
    assert get(url, tls, auth=ALICE).status == 200  # still cached
    assert len(bcrypt_calls) == 5


def test_the_toolkits_cache_poisoning_case_is_refused(users_over_tls: str, pki: Pki) -> None:
    """CVE-2022-46146: user and password must not be joinable into another user's key."""
    url, tls = users_over_tls, client_tls(pki.ca)
    assert get(url, tls, auth=("alice" + "$2y$04$s37QOBYaJXOGCTdo6BpJE", "alice-pw")).status == 401
    assert get(url, tls, auth=("alice", "alice-pw" + "x")).status == 401


def test_basic_auth_with_curl(users_over_tls: str, pki: Pki) -> None:
    curl = require_binary("curl")
    base = [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(pki.ca)]
    codes = [
        subprocess.run([*base, "-u", user, users_over_tls], capture_output=True, text=True).stdout
        for user in ("alice:alice-pw", "alice:nope")
    ]
    assert codes == ["200", "401"]


def test_headers_are_added_to_every_response(pki: Pki, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        (TESTDATA / "headers.yml").read_text()
        + f"basic_auth_users:\n  dave: {hashed('dave-pw').reveal()}\n"
    )
    with serve(web) as served:
        replies = [
            get(served.url, auth=DAVE),
            get(served.url),  # 401
            get(f"{served.url}/no-such-page", auth=DAVE),  # 404 raised by the router
        ]
        assert [r.status for r in replies] == [200, 401, 404]
        for reply in replies:
            assert reply.headers["X-Frame-Options"] == "deny"
            assert reply.headers["X-Content-Type-Options"] == "nosniff"
            assert reply.headers["X-XSS-Protection"] == "1"
            assert (
                reply.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
            )
            assert reply.headers["Content-Security-Policy"] == "default-src 'self'"
        # A header the handler sets itself wins, as in the Go toolkit.
        assert get(f"{served.url}/own-header", auth=DAVE).headers["X-Frame-Options"] == "sameorigin"


def test_header_values_are_sent_as_written(pki: Pki) -> None:
    with serve(render(TESTDATA / "header_values_any_scalar.yml", pki.folder)) as served:
        headers = get(served.url).headers
        assert (headers["X-XSS-Protection"], headers["Strict-Transport-Security"]) == ("0", "1.50")
        assert headers["Content-Security-Policy"] == "yes"
    with serve(render(TESTDATA / "header_value_line_break.yml", pki.folder)) as served:
        reply = get(served.url)
        assert reply.headers["Content-Security-Policy"] == "default-src 'self'  Set-Cookie: a=b"
        assert "Set-Cookie" not in reply.headers


def test_rate_limit_answers_429_beyond_the_bucket(pki: Pki, bcrypt_calls: list[bytes]) -> None:
    clock = FakeClock(1000.0)
    web = render(TESTDATA / "rate_limit.yml", pki.folder)  # one per 250 ms, bursts of 3
    with serve(web, clock=clock) as served:
        assert [get(served.url).status for _ in range(4)] == [200, 200, 200, 429]
        reply = get(served.url)
        assert (reply.status, reply.text) == (429, "Too Many Requests\n")
        clock.advance(0.25)
        assert [get(served.url).status for _ in range(2)] == [200, 429]
        clock.advance(10)  # the bucket refills to its burst, no further
        assert [get(served.url).status for _ in range(4)] == [200, 200, 200, 429]


def test_rate_limit_comes_before_basic_auth_and_is_per_listener(
    pki: Pki, tmp_path: Path, bcrypt_calls: list[bytes]
) -> None:
    web = tmp_path / "web.yml"
    web.write_text(
        "rate_limit: {interval: 1h, burst: 1}\nhttp_server_config:\n  headers:\n"
        f"    X-Frame-Options: deny\nbasic_auth_users:\n  dave: {hashed('dave-pw').reveal()}\n"
    )
    with serve(web) as metrics, serve(web) as proxy:
        assert get(metrics.url, auth=DAVE).status == 200
        limited = get(metrics.url, auth=DAVE)
        assert limited.status == 429
        assert "X-Frame-Options" not in limited.headers  # the toolkit sets headers after it
        assert len(bcrypt_calls) == 1  # the refused request cost no bcrypt
        assert get(proxy.url, auth=DAVE).status == 200  # another listener, another bucket


def test_rate_limit_off_and_burst_zero(pki: Pki) -> None:
    with serve(render(TESTDATA / "rate_limit_off.yml", pki.folder)) as served:
        assert {get(served.url).status for _ in range(11)} == {200}
    with serve(render(TESTDATA / "rate_limit_no_burst.yml", pki.folder)) as served:
        assert {get(served.url).status for _ in range(3)} == {429}


# --- Who waits for whom -----------------------------------------------------------------------


def _gated_bcrypt(monkeypatch: pytest.MonkeyPatch, blocked: set[bytes]) -> threading.Event:
    """bcrypt that blocks on checks against `blocked` hashes until the event is set."""
    release = threading.Event()
    real = web_auth._bcrypt_check

    def gated(password: bytes, hashed: bytes) -> bool:
        if hashed in blocked:
            assert release.wait(30), "never released"
        return real(password, hashed)

    monkeypatch.setattr(web_auth, "_bcrypt_check", gated)
    return release


def hashed(password: str, cost: int = 4) -> Secret:
    return Secret(bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode())


def test_a_slow_check_delays_neither_other_users_nor_cached_logins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users = {"alice": hashed("alice-pw"), "bob": hashed("bob-pw"), "carol": hashed("carol-pw")}
    auth = BasicAuth(users, BcryptLanes())
    release = _gated_bcrypt(monkeypatch, {users["bob"].reveal().encode(), auth._dummy})

    async def scenario() -> None:
        assert await auth.check("carol", b"carol-pw")  # cached from now on
        slow = [
            asyncio.create_task(auth.check("bob", b"bob-pw")),  # stands for a cost-18 hash
            *(asyncio.create_task(auth.check(f"nobody{i}", b"x")) for i in range(50)),
        ]
        await asyncio.sleep(0.05)
        # While bob's check and 50 unknown users' checks are stuck, alice's first login and
        # carol's cached one go through.
        assert await asyncio.wait_for(auth.check("alice", b"alice-pw"), 10)
        assert await asyncio.wait_for(auth.check("carol", b"carol-pw"), 10)
        assert not any(task.done() for task in slow)
        release.set()
        results = await asyncio.gather(*slow)
        assert results == [True] + [False] * 50

    asyncio.run(scenario())
    auth._lanes.close()


def test_unknown_users_share_one_lane_and_each_costs_a_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    auth = BasicAuth({"alice": hashed("alice-pw")}, BcryptLanes())
    running: list[int] = []
    most = [0]
    real = web_auth._bcrypt_check
    lock = threading.Lock()

    def counting(password: bytes, hashed_: bytes) -> bool:
        with lock:
            running.append(1)
            most[0] = max(most[0], len(running))
        try:
            return real(password, hashed_)
        finally:
            with lock:
                running.pop()

    monkeypatch.setattr(web_auth, "_bcrypt_check", counting)

    async def flood() -> list[bool]:
        return await asyncio.gather(*(auth.check(f"u{i}", b"pw") for i in range(20)))

    assert asyncio.run(flood()) == [False] * 20
    assert most[0] == 1  # one check at a time for all unknown users: one core at most
    auth._lanes.close()


def test_cache_is_bounded_lru(bcrypt_calls: list[bytes]) -> None:
    users = {name: hashed(name) for name in ("a", "b", "c")}
    auth = BasicAuth(users, BcryptLanes(), cache_size=2)

    async def scenario() -> list[bool]:
        return [await auth.check(name, name.encode()) for name in "abcca"]

    assert asyncio.run(scenario()) == [True] * 5
    # a, b, c checked; c cached; a had been evicted by c, so it is checked again.
    assert len(bcrypt_calls) == 4
    auth._lanes.close()


def test_a_reload_keeps_the_cache_of_unchanged_users(
    pki: Pki, tmp_path: Path, bcrypt_calls: list[bytes]
) -> None:
    web = tmp_path / "web.yml"
    shutil.copy(TESTDATA / "users.yml", web)
    live = LiveWebConfig(web, listener="web")
    try:
        first = live._state.auth
        assert first is not None
        asyncio.run(first.check("dave", b"dave-pw"))
        assert live.reload() is None
        second = live._state.auth
        assert second is not None and second is not first
        assert asyncio.run(second.check("dave", b"dave-pw"))
        assert len(bcrypt_calls) == 1
    finally:
        live.close()


def test_htpasswd_and_go_hashes_verify() -> None:
    # A $2y$ hash made by Go's bcrypt package (the shape the toolkit documents), of "fakepassword".
    go_hash = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
    assert web_auth._bcrypt_check(b"fakepassword", web_auth._normalise_hash(go_hash))
    assert not web_auth._bcrypt_check(b"fakepassword!", web_auth._normalise_hash(go_hash))


def test_passwords_longer_than_72_bytes_use_the_first_72() -> None:
    # bcrypt only reads 72 bytes; the Python package raises instead of truncating like Go.
    digest = web_auth._normalise_hash(hashed("x" * 72).reveal())
    assert web_auth._bcrypt_check(b"x" * 100, digest)
    assert not web_auth._bcrypt_check(b"y" * 100, digest)
