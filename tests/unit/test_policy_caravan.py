"""The bundled Caravan (CoIL 2000) data of the bank scenario."""

from __future__ import annotations

from importlib import resources

import numpy as np

from fedinfra.data.caravan import FEATURES, ROWS, load_caravan, read_caravan
from fedinfra.policy.scan import scan_table


def test_caravan_has_the_published_shape_and_label_rate() -> None:
    names, x, y = read_caravan()
    assert (len(names), x.shape, y.shape) == (FEATURES, (ROWS, FEATURES), (ROWS,))
    assert int(y.sum()) == 348  # 348 of 5,822 customers bought a caravan policy


def test_split_is_stratified_and_standardised_on_the_holdout_not_pooled_site_rows() -> None:
    d = load_caravan(test_fraction=0.2, seed=0)
    assert d.x_train.dtype == np.float32
    assert d.num_classes == 2
    assert abs(float(d.y_train.mean()) - float(d.y_test.mean())) < 0.01
    # Issue 14 item 6: the constants come from the held-out split, never the sites' pooled rows.
    assert np.allclose(d.x_test.mean(axis=0), 0, atol=1e-4)
    assert not np.allclose(d.x_train.mean(axis=0), 0, atol=1e-4)
    assert np.abs(d.x_train.mean(axis=0)).max() < 0.2  # same population: still roughly centred


def test_licence_and_source_note_ship_with_the_data() -> None:
    files = resources.files("fedinfra.data") / "files"
    assert "Redistribution and use" in (files / "LICENSE-ISLP.txt").read_text()
    assert "CoIL" in (files / "SOURCE.txt").read_text()


def test_caravan_features_hold_no_identifier() -> None:
    names, x, _ = read_caravan()
    table = {n: [str(int(v)) for v in x[:2000, i]] for i, n in enumerate(names)}
    assert scan_table(table).flagged == []
