"""The digest of a global model (``fedinfra.aggregation.digest``): float32 bytes, C order, name order."""

from __future__ import annotations

import hashlib

import numpy as np

from fedinfra.aggregation.digest import blob_digest, model_bytes, model_digest


def test_model_bytes_are_the_float32_c_order_tensors_in_sorted_name_order() -> None:
    weights = {
        "z": np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float64, order="F"),
        "a": np.array([5], dtype=np.int64),
    }
    want = np.array([5.0], np.float32).tobytes() + np.array([1.0, 2.0, 3.0, 4.0], np.float32).tobytes()
    assert model_bytes(weights) == want
    assert model_digest(weights) == hashlib.sha256(want).hexdigest()


def test_the_digest_does_not_depend_on_the_dicts_order_or_memory_layout() -> None:
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.ones(3, dtype=np.float32)
    assert model_digest({"w": w, "b": b}) == model_digest({"b": b, "w": np.asfortranarray(w)})
    assert model_digest({"w": w, "b": b}) != model_digest({"w": w.T.copy().reshape(2, 3), "b": b})


def test_an_aggregates_digest_is_the_sha256_of_its_bytes() -> None:
    assert blob_digest(b"ciphertext") == hashlib.sha256(b"ciphertext").hexdigest()
    assert blob_digest(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
