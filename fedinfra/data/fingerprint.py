"""Dataset fingerprints: a keyed commitment to the exact training data.

The fingerprint lets an audit record which data a site trained on without holding any
of it (GDPR Art. 5(1)(c) data minimisation: the log keeps a hash, never the records).

An unkeyed hash of the exact data is a membership oracle: anyone who knows every record
but one hashes both candidate tables and compares. So what leaves a site is
:func:`keyed_fingerprint`, an HMAC-SHA256 (RFC 2104) of the data digest under a secret
that stays in the site's home; the same key gives the same fingerprint run after run (the
site's ledger is keyed by it), and nobody without the key can test a candidate table.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import numpy.typing as npt


def fingerprint_arrays(x: npt.NDArray[np.generic], y: npt.NDArray[np.generic]) -> str:
    """Return ``sha256:<hex>`` over shape, dtype and bytes of features and labels."""
    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        h.update(f"{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()


#: Prefix of a keyed fingerprint.
KEYED_PREFIX = "hmac-sha256:"


def keyed_fingerprint(digest: str, key: bytes) -> str:
    """``hmac-sha256:<hex>`` of a :func:`fingerprint_arrays` digest under the site's ``key``.

    >>> keyed_fingerprint("sha256:00", b"k" * 32)[:20]
    'hmac-sha256:50f7e3b5'
    """
    if len(key) < 32:
        raise ValueError("fingerprint key must be at least 32 bytes (RFC 2104 section 3: at least the hash length)")
    return KEYED_PREFIX + hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
