"""The Subject Alternative Names of a DER certificate, written the way Go writes them.

``client_allowed_sans`` compares each entry, exactly, with the client certificate's DNS names,
e-mail addresses, IP addresses and URIs as Go's crypto/x509 gives them. Python's ``ssl``
decodes a peer certificate only once it has been verified (``getpeercert()`` is empty for
``RequestClientCert`` and ``RequireAnyClientCert``), so the DER bytes are read here: the
certificate has already been parsed by OpenSSL during the handshake, and only the
extension's outer structure is walked.
"""

from __future__ import annotations

import ipaddress

__all__ = ["subject_alt_names"]

_SEQUENCE = 0x30
_EXTENSIONS = 0xA3  # [3] EXPLICIT in TBSCertificate
_OID = 0x06
_OCTET_STRING = 0x04
_SUBJECT_ALT_NAME = bytes([0x55, 0x1D, 0x11])  # 2.5.29.17
# GeneralName choices (context-specific, implicit tagging) that Go turns into strings.
_EMAIL, _DNS, _URI, _IP = 0x81, 0x82, 0x86, 0x87


class _BadDER(ValueError):
    pass


def _items(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    """The (tag, content start, content end) of each DER element in data[start:end]."""
    items = []
    position = start
    while position < end:
        if position + 2 > end:
            raise _BadDER("truncated")
        tag, length = data[position], data[position + 1]
        position += 2
        if length & 0x80:
            size = length & 0x7F
            if not 1 <= size <= 4 or position + size > end:
                raise _BadDER("bad length")
            length = int.from_bytes(data[position : position + size], "big")
            position += size
        if position + length > end:
            raise _BadDER("element overruns its parent")
        items.append((tag, position, position + length))
        position += length
    return items


def _only(data: bytes, start: int, end: int, tag: int) -> tuple[int, int]:
    items = _items(data, start, end)
    if len(items) != 1 or items[0][0] != tag:
        raise _BadDER(f"expected one element with tag {tag:#x}")
    return items[0][1], items[0][2]


def _ip_text(raw: bytes) -> str | None:
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        address = ipaddress.IPv6Address(raw)
        # Go prints an IPv4-mapped address as the IPv4 address.
        return str(address.ipv4_mapped) if address.ipv4_mapped else address.compressed
    return None


def subject_alt_names(der: bytes) -> list[str]:
    """DNS names, e-mail addresses, IP addresses and URIs from the SAN extension, in order.

    A certificate without the extension gives []; malformed DER raises ValueError.
    """
    certificate = _only(der, 0, len(der), _SEQUENCE)
    fields = _items(der, *certificate)
    if not fields or fields[0][0] != _SEQUENCE:
        raise _BadDER("no TBSCertificate")
    names: list[str] = []
    for tag, start, end in _items(der, fields[0][1], fields[0][2]):
        if tag != _EXTENSIONS:
            continue
        for ext_tag, ext_start, ext_end in _items(der, *_only(der, start, end, _SEQUENCE)):
            if ext_tag != _SEQUENCE:
                raise _BadDER("bad extension")
            parts = _items(der, ext_start, ext_end)
            if not parts or parts[0][0] != _OID:
                raise _BadDER("extension without an OID")
            if der[parts[0][1] : parts[0][2]] != _SUBJECT_ALT_NAME:
                continue
            if parts[-1][0] != _OCTET_STRING:
                raise _BadDER("extension without a value")
            value = _only(der, parts[-1][1], parts[-1][2], _SEQUENCE)
            for name_tag, name_start, name_end in _items(der, *value):
                raw = der[name_start:name_end]
                if name_tag in (_EMAIL, _DNS, _URI):
                    try:
                        names.append(raw.decode("ascii"))  # IA5String
                    except UnicodeDecodeError:
                        raise _BadDER("a SAN that is not IA5 text") from None
                elif name_tag == _IP:
                    text = _ip_text(raw)
                    if text is None:
                        raise _BadDER("an IP address SAN of a bad length")
                    names.append(text)
    return names
