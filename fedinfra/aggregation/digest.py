"""The digest of a global model (or of an encrypted aggregate) that an instruction names.

Every instruction carries the SHA-256 of the model it is built from, the coordinator logs
it, and the site recomputes it from what it received and refuses a mismatch (issue 16,
"consistent views"). The digest is the one the audit log already records as the subject
of ``aggregation.completed``: the tensors' float32 bytes in name order, or the aggregate
ciphertext's bytes under HE. A site can therefore compare what it was sent with what the
cosigned log says every other site was sent (split-view detection, as in Certificate
Transparency's gossip, RFC 9162 section 8.1.4).
"""

from __future__ import annotations

import hashlib

import numpy as np

from fedinfra.types import NDArrays


def model_bytes(weights: NDArrays) -> bytes:
    """The canonical bytes of a model: float32 tensors, C order, in sorted name order."""
    return b"".join(np.ascontiguousarray(weights[k], dtype=np.float32).tobytes() for k in sorted(weights))


def model_digest(weights: NDArrays) -> str:
    """Hex SHA-256 of :func:`model_bytes`."""
    return hashlib.sha256(model_bytes(weights)).hexdigest()


def blob_digest(data: bytes) -> str:
    """Hex SHA-256 of an encrypted aggregate."""
    return hashlib.sha256(data).hexdigest()


__all__ = ["blob_digest", "model_bytes", "model_digest"]
