"""HTTP basic auth against bcrypt hashes, built so that nobody can queue other people's logins.

bcrypt is slow on purpose (cost 10: ~60 ms of CPU, cost 18: ~15 s), so where the checks run
decides who waits for whom. The Go toolkit runs one check at a time under one lock: anyone
who can reach the port can put a scrape behind a queue of bogus logins. Here:

- a cached success answers at once, without touching bcrypt (successes are cached, keyed by
  a SHA-256 of user, password and hash; failures never are, so each failed attempt costs a
  full check again);
- every check runs in a worker thread, off the event loop, in a *lane*: one per configured
  user and one shared by all unknown users. A lane runs one check at a time (bounded
  concurrency: at most users + 1 checks at once), and lanes never wait for each other, so a
  flood of unknown-user logins, or one user's cost-18 hash, delays neither a cached login nor
  another user's first login;
- an unknown user costs one check against a dummy hash of cost 10, as in the toolkit.

What this cannot hide: under a flood, unknown users' answers slow down while known users' do
not, so timing then tells known user names from unknown ones; and someone who knows a user
name can delay that user's first, uncached login by sending wrong passwords for it (the
scrapes after that one are cached). ``rate_limit`` bounds both.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import bcrypt

from exporter.config import Secret

log = logging.getLogger(__name__)

# bcrypt only ever uses the first 72 bytes of a password (Go and htpasswd silently
# truncate; the Python package raises instead), so the same truncation is done here.
_BCRYPT_MAX_PASSWORD = 72
AUTH_CACHE_SIZE = 1024
DUMMY_COST = 10  # what the toolkit's fixed hash for unknown users costs
_GO_MIN_HASH_SIZE = 59  # golang.org/x/crypto/bcrypt minHashSize


def bcrypt_cost_problem(hashed: str) -> str | None:
    """What Go's ``bcrypt.Cost`` refuses in `hashed`, or None: the toolkit's load-time check.

    Go reads only the prefix and the cost; the salt and digest are checked at login. The
    message never quotes the value, which may be a password pasted by mistake.
    """
    raw = hashed.encode()
    if len(raw) < _GO_MIN_HASH_SIZE:
        return "too short to be a bcrypt hash"
    if raw[0:1] != b"$":
        return "not a bcrypt hash: it must start with '$'"
    if raw[1] > ord("2"):
        return "not a bcrypt hash: its version is newer than 2"
    start = 3 if raw[2:3] == b"$" else 4
    cost = raw[start : start + 2]
    if not re.fullmatch(rb"[+-]?[0-9]+", cost):
        return "not a bcrypt hash: the cost is not a number"
    if not 4 <= int(cost) <= 31:
        return f"bcrypt cost {int(cost)} is outside the allowed range 4-31"
    return None


def _normalise_hash(hashed: str) -> bytes:
    # $2y$ (htpasswd, PHP) is the same algorithm as $2b$. The installed bcrypt reads both,
    # but that is not promised for every release the dependency range allows, so rewrite it.
    if hashed.startswith("$2y$"):
        hashed = "$2b$" + hashed[4:]
    return hashed.encode()


def bcrypt_parses(hashed: str) -> bool:
    """Whether bcrypt can check against `hashed`, tried at cost 4 (about a millisecond)."""
    cheap = _normalise_hash(hashed)
    try:
        bcrypt.checkpw(b"", cheap[:4] + b"04" + cheap[6:])
    except ValueError:
        return False
    return True


def _bcrypt_check(password: bytes, hashed: bytes) -> bool:
    """One bcrypt comparison (constant time inside bcrypt). Tests count calls to this."""
    return bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], hashed)


def _dummy_hash(cost: int) -> bytes:
    """A valid hash of a random password at `cost`, cheap to make (computed at cost 4)."""
    cheap = bcrypt.hashpw(base64.b64encode(bcrypt.gensalt()), bcrypt.gensalt(4))
    return cheap[:4] + b"%02d" % cost + cheap[6:]


class BcryptLanes:
    """Worker threads for bcrypt: one lane per configured user, one for all unknown users.

    Each lane is a one-thread executor, so its checks run one at a time in arrival order and
    never wait for another lane. Threads start on first use. One object serves a listener for
    its whole life, across reloads of its web config.
    """

    UNKNOWN = ""  # the lane key of users not in the file ("" is never a user's lane key)

    def __init__(self) -> None:
        self._executors: dict[str, ThreadPoolExecutor] = {}

    def _lane(self, user: str | None) -> ThreadPoolExecutor:
        key = self.UNKNOWN if user is None else f"user:{user}"
        executor = self._executors.get(key)
        if executor is None:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcrypt")
            self._executors[key] = executor
        return executor

    async def check(self, user: str | None, password: bytes, hashed: bytes) -> bool:
        """bcrypt in `user`'s lane (None: the unknown users' lane)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._lane(user), _bcrypt_check, password, hashed)

    def keep_only(self, users: Iterable[str]) -> None:
        """Stop the lanes of users no longer configured (after a reload)."""
        keep = {self.UNKNOWN} | {f"user:{user}" for user in users}
        for key in [k for k in self._executors if k not in keep]:
            self._executors.pop(key).shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()


class BasicAuth:
    """Checks ``Authorization: Basic`` headers against bcrypt hashes, caching successes."""

    def __init__(
        self,
        users: Mapping[str, Secret],
        lanes: BcryptLanes | None = None,
        *,
        cache_size: int = AUTH_CACHE_SIZE,
        previous: BasicAuth | None = None,
    ) -> None:
        self._users = {user: _normalise_hash(h.reveal()) for user, h in users.items()}
        self._dummy = _dummy_hash(DUMMY_COST)
        self._lanes = lanes if lanes is not None else BcryptLanes()
        # Cache keys include the hash, so after a reload the entries of users whose hash did
        # not change stay valid and the others can never match again.
        self._cache: OrderedDict[bytes, None] = previous._cache if previous else OrderedDict()
        self._cache_size = cache_size
        self._lanes.keep_only(self._users)

    def __repr__(self) -> str:
        return f"BasicAuth(users={sorted(self._users)}, cached={len(self._cache)})"

    async def check_header(self, header: str | None) -> bool:
        credentials = parse_basic(header)
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
        try:
            ok = await self._lanes.check(user if known else None, password, hashed)
        except ValueError:
            # A hash bcrypt cannot read (the toolkit accepts some): warned about at load.
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


def parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """(user, password) from an ``Authorization: Basic`` value; None if it is not one."""
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


def add_headers(target: Any, headers: Mapping[str, str]) -> None:
    """Add the configured headers; one the handler set itself wins."""
    for name, value in headers.items():
        target.setdefault(name, value)
