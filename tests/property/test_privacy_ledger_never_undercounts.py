"""Property: the ledger never under-counts and never lets a spend pass a cap."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fedinfra.errors import PrivacyBudgetExceeded
from fedinfra.privacy import PrivacyLedger

RUN_CAP = 4.0
LIFETIME_CAP = 9.0

spends = st.lists(
    st.tuples(
        st.sampled_from(["r1", "r2", "r3", "r4"]),
        st.integers(min_value=0, max_value=5),
        st.floats(min_value=0.0, max_value=5.0, allow_nan=False),
        st.sampled_from(["sha256:a", "sha256:b"]),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(spends)
def test_the_ledger_never_under_counts(requests: list[tuple[str, int, float, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        book = PrivacyLedger(Path(tmp) / "ledger.db")
        try:
            accepted: dict[tuple[str, str], float] = {}
            for run, rnd, eps, fp in requests:
                try:
                    book.reserve(run_id=run, round=rnd, mechanism="dp-sgd", accountant="rdp", params={},
                                 epsilon=eps, delta=1e-6, dataset_fingerprint=fp,
                                 run_cap=RUN_CAP, lifetime_cap=LIFETIME_CAP)
                except PrivacyBudgetExceeded:
                    continue
                accepted[(fp, run)] = max(accepted.get((fp, run), 0.0), eps)

            for fp in ("sha256:a", "sha256:b"):
                truth = sum(v for (f, _), v in accepted.items() if f == fp)
                lifetime = book.spent(dataset_fingerprint=fp)
                assert lifetime >= truth - 1e-9
                assert lifetime <= LIFETIME_CAP + 1e-9
                for (f, run), v in accepted.items():
                    if f == fp:
                        run_spent = book.spent(dataset_fingerprint=fp, run_id=run)
                        assert v - 1e-12 <= run_spent <= RUN_CAP + 1e-9
        finally:
            book.close()
