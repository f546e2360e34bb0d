import numpy as np
import pytest

from fedinfra.config.device import BackoffSpec
from fedinfra.edge.backoff import Backoff, nominal_delay
from fedinfra.edge.state import EdgeState
from fedinfra.errors import StoreError


def test_delays_grow_exponentially_to_the_cap_with_jitter_below_nominal():
    spec = BackoffSpec(initial_s=1, max_s=60, multiplier=2, jitter=0.5)
    b = Backoff(spec, rng=np.random.default_rng(0))
    delays = [b.next_delay() for _ in range(12)]
    for attempt, d in enumerate(delays):
        nominal = nominal_delay(spec, attempt)
        assert 0.5 * nominal <= d <= nominal
    assert nominal_delay(spec, 11) == 60
    b.reset()
    assert b.next_delay() <= 1


def test_jitter_spreads_a_fleet():
    spec = BackoffSpec(initial_s=10, max_s=10)
    draws = {round(Backoff(spec, rng=np.random.default_rng(s)).next_delay(), 3) for s in range(50)}
    assert len(draws) > 40


def test_huge_attempt_count_does_not_overflow():
    assert nominal_delay(BackoffSpec(), 10**6) == BackoffSpec().max_s


def test_state_survives_a_restart(tmp_path):
    with EdgeState(tmp_path / "s") as st:
        st.write_json("status.json", {"starts": 3})
        (st.ledger_dir / "ledger.db").write_bytes(b"spent")
        st.save_residual(np.arange(5, dtype=np.float64))
    with EdgeState(tmp_path / "s") as st:
        assert st.read_json("status.json") == {"starts": 3}
        assert (st.ledger_dir / "ledger.db").read_bytes() == b"spent"
        assert np.array_equal(st.load_residual(), np.arange(5))
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o700


def test_two_clients_cannot_share_a_state_dir(tmp_path):
    with EdgeState(tmp_path / "s"), pytest.raises(StoreError, match="another fedinfra edge client"):
        EdgeState(tmp_path / "s").lock()


def test_corrupt_state_file_is_a_clear_error(tmp_path):
    st = EdgeState(tmp_path / "s")
    (tmp_path / "s" / "status.json").write_text("{not json")
    with pytest.raises(StoreError, match="unreadable state file"):
        st.read_json("status.json")
