"""Two OpenSSL calls that Python's ``ssl`` module does not expose, made through ctypes.

- ``SSL_CTX_set1_groups_list``: offer several curves. ``SSLContext.set_ecdh_curve`` sets one,
  and the toolkit's ``curve_preferences`` is a list.
- ``SSL_CTX_set_verify`` with a verify callback that accepts any certificate: Go's
  ``RequestClientCert`` and ``RequireAnyClientCert`` ask for a client certificate and do not
  verify it, and Python's ``ssl`` has no verify callback.

Both need the ``SSL_CTX *`` behind an ``SSLContext``. CPython keeps it as the first field
after the object header (``PySSLContext.ctx``, unchanged from 3.7 to 3.13); it is read from
there and then checked before any use: OpenSSL's own ``SSL_CTX_get_options`` and
``SSL_CTX_get_verify_mode`` on that pointer must return exactly what the ``SSLContext``
reports. The functions are looked up through the ``_ssl`` extension module, so they are the
very library Python's ``ssl`` uses. If anything does not match (another Python
implementation, a changed layout, a missing symbol), :class:`OpenSSLUnavailable` is raised
and nothing is called.
"""

from __future__ import annotations

import ctypes
import functools
import ssl

__all__ = ["OpenSSLUnavailable", "accept_any_certificate", "set_groups"]

_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl
_VERIFY_MODES = {ssl.CERT_NONE: 0, ssl.CERT_OPTIONAL: 1, ssl.CERT_REQUIRED: 3}

_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_any(preverify_ok: int, store_ctx: int | None) -> int:
    return 1


# Module-level, so it lives as long as any context that points to it.
_ACCEPT_ANY = _VerifyCallback(_accept_any)


class OpenSSLUnavailable(Exception):
    """The OpenSSL functions cannot be reached safely from this Python build."""


@functools.cache
def _lib() -> ctypes.CDLL:
    import _ssl

    try:
        # dlopen() of the already-loaded extension: its symbol scope includes the libssl it
        # was linked with. A Python with _ssl built in has them in the executable itself.
        lib = ctypes.CDLL(getattr(_ssl, "__file__", None))
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
        lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
        lib.SSL_CTX_set_verify.restype = None
        lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
    except (OSError, AttributeError) as err:
        raise OpenSSLUnavailable(f"OpenSSL functions not found: {err}") from None
    return lib


def _ctx_pointer(ctx: ssl.SSLContext) -> int:
    lib = _lib()
    if not isinstance(ctx, ssl.SSLContext):
        raise OpenSSLUnavailable("not an ssl.SSLContext")
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if (
        not pointer
        or lib.SSL_CTX_get_options(pointer) != ctx.options
        or lib.SSL_CTX_get_verify_mode(pointer) & 3 != _VERIFY_MODES[ctx.verify_mode]
    ):
        raise OpenSSLUnavailable("the SSL_CTX of an SSLContext could not be located")
    return pointer


def set_groups(ctx: ssl.SSLContext, groups: list[str]) -> None:
    """Offer exactly `groups` (OpenSSL names such as "X25519", "P-384"), in that order."""
    pointer = _ctx_pointer(ctx)
    names = ":".join(groups).encode("ascii")
    if _lib().SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.c_char_p(names)) != 1:
        raise OpenSSLUnavailable(f"OpenSSL refused the group list {names.decode()}")


def accept_any_certificate(ctx: ssl.SSLContext) -> None:
    """Accept whatever certificate the client sends, keeping `ctx.verify_mode` (whether one is
    requested, and whether it is required). Set verify_mode before calling this."""
    pointer = _ctx_pointer(ctx)
    lib = _lib()
    lib.SSL_CTX_set_verify(pointer, lib.SSL_CTX_get_verify_mode(pointer), _ACCEPT_ANY)
