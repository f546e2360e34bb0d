"""Dataset fingerprints: a SHA-256 commitment to the exact training data.

The fingerprint lets an audit record which data a site trained on without holding any
of it (GDPR Art. 5(1)(c) data minimisation: the log keeps a hash, never the records).
"""

from __future__ import annotations

import hashlib

import numpy as np
import numpy.typing as npt


def fingerprint_arrays(x: npt.NDArray[np.generic], y: npt.NDArray[np.generic]) -> str:
    """Return ``sha256:<hex>`` over shape, dtype and bytes of features and labels."""
    h = hashlib.sha256()
    for arr in (np.ascontiguousarray(x), np.ascontiguousarray(y)):
        h.update(f"{arr.dtype.str}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return "sha256:" + h.hexdigest()
