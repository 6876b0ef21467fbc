"""HTTP basic auth against bcrypt hashes, and the middleware that applies a web config's
users and headers to a listener."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import bcrypt
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from exporter.config import Secret

log = logging.getLogger(__name__)

# bcrypt only ever uses the first 72 bytes of a password (Go and htpasswd silently
# truncate; the Python package raises instead), so the same truncation is done here.
_BCRYPT_MAX_PASSWORD = 72
AUTH_CACHE_SIZE = 1024


def web_middleware(
    users: Mapping[str, Secret], headers: Mapping[str, str], for_proxy: bool = False
) -> Middleware:
    """Basic auth (when users are configured) and the configured headers, as one middleware.

    Each call builds its own cache of successful checks, so a reloaded file starts clean.
    ``for_proxy``: on the metering proxy ``Authorization`` carries the DeepSeek key, so the
    credentials travel in ``Proxy-Authorization`` and a refusal is a 407.
    """
    credentials = hdrs.PROXY_AUTHORIZATION if for_proxy else hdrs.AUTHORIZATION
    status, challenge = (
        (407, hdrs.PROXY_AUTHENTICATE) if for_proxy else (401, hdrs.WWW_AUTHENTICATE)
    )
    headers = dict(headers)
    auth = BasicAuth(users) if users else None

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


def bcrypt_parses(hashed: str) -> bool:
    """Whether bcrypt accepts the salt, tried at cost 4 (about a millisecond)."""
    cheap = _normalise_hash(hashed)
    try:
        bcrypt.checkpw(b"", cheap[:4] + b"04" + cheap[6:])
    except ValueError:
        return False
    return True
