"""Expiring URL signatures, shared by every store that signs its own URLs.

A signature is ``HMAC-SHA256(secret, f"{key}:{expires}")`` in lowercase hex, where
``expires`` is a unix time in whole seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import math

_SIGNATURE_LEN = 64  # hex digits of a SHA-256 digest
# Ten digits last until the year 2286; a longer value is garbage, and refusing it
# early keeps int() from chewing on an attacker's megabyte of digits.
_MAX_EXPIRES_DIGITS = 12


def expires_at(now: float, ttl_s: int, *, granularity_s: int = 60) -> int:
    """``now + ttl_s`` rounded up to a multiple of ``granularity_s``.

    Rounding makes every URL asked for within the same window identical, so clients
    and caches see one URL per file per minute instead of a new one per request.
    Rounding up, not down, keeps a URL valid for at least ``ttl_s``.
    """
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, not {ttl_s}")
    if granularity_s <= 0:
        raise ValueError(f"granularity_s must be positive, not {granularity_s}")
    deadline = math.ceil(now + ttl_s)
    return -(-deadline // granularity_s) * granularity_s


def sign(secret: str, key: str, expires: int) -> str:
    """The hex signature that lets ``key`` be fetched until ``expires``."""
    if not secret:
        raise ValueError("a signing secret must not be empty")
    message = f"{key}:{expires}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _parse_expires(expires: str | int | None) -> int | None:
    if isinstance(expires, bool):  # bool is an int, but never a timestamp
        return None
    if isinstance(expires, int):
        return expires if expires >= 0 else None
    if not isinstance(expires, str) or not expires:
        return None
    # Only the canonical form we emit: no sign, spaces, underscores, leading zeros or
    # non-ASCII digits, all of which int() would quietly accept.
    if len(expires) > _MAX_EXPIRES_DIGITS or not (expires.isascii() and expires.isdigit()):
        return None
    if expires != "0" and expires.startswith("0"):
        return None
    return int(expires)


def verify(
    secret: str,
    key: str,
    expires: str | int | None,
    signature: str | None,
    *,
    now: float,
) -> bool:
    """Whether ``signature`` is valid for ``key`` and ``expires`` and not yet expired."""
    deadline = _parse_expires(expires)
    if deadline is None or deadline <= now:
        return False
    if (
        not isinstance(signature, str)
        or len(signature) != _SIGNATURE_LEN
        or not signature.isascii()
    ):
        return False
    expected = sign(secret, key, deadline)
    # compare_digest takes as long for a near miss as for a wild guess, so response
    # timing does not leak how many leading characters were right.
    return hmac.compare_digest(expected, signature)
