"""Write keys: reading one from an ``Authorization`` header, and finding whose it is.

>>> write_key_from_header("Basic azE6")  # base64("k1:")
'k1'
>>> key_owner("k1", {"demo": "k1", "web": "k2"})
'demo'
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping

__all__ = ["key_owner", "write_key_from_header"]


def write_key_from_header(authorization: str | None) -> str | None:
    """The write key of ``Authorization: Basic base64(writeKey:)``, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII text in the token
        return None
    return decoded.split(":", 1)[0] or None


def key_owner(key: str | None, keys: Mapping[str, str]) -> str | None:
    """The name whose secret is ``key`` (write or read keys), compared in constant time.

    A key that is not valid Unicode (a lone surrogate from a JSON escape) is nobody's.
    """
    if not key:
        return None
    try:
        given = key.encode("utf-8")
    except UnicodeEncodeError:
        return None
    found = None
    for name, secret in keys.items():  # compare all, in constant time
        if hmac.compare_digest(given, secret.encode("utf-8")):
            found = name
    return found
