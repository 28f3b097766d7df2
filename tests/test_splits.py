"""Patient-level splits: no patient on both sides, stratified, seeded."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.datasets import density_table, load_dataset
from pipeline.errors import DatasetError
from pipeline.splits import patient_folds, train_test_split_by_patient


@pytest.fixture(scope="module")
def mias(mias_dir):
    return density_table(load_dataset("mias", mias_dir))


def test_folds_never_share_a_patient_and_cover_all_rows(mias):
    seen = []
    for train, val in patient_folds(mias, "density", n_splits=5, seed=0):
        assert not set(mias["patient_id"].iloc[train]) & set(mias["patient_id"].iloc[val])
        seen.extend(val)
        shares = mias["density"].iloc[val].value_counts(normalize=True)
        assert set(shares.index) == {"F", "G", "D"} and shares.min() > 0.15  # stratified
    assert sorted(seen) == list(range(len(mias)))


def test_held_out_split_by_patient_is_seeded(mias):
    train, test = train_test_split_by_patient(mias, "density", test_size=0.2, seed=1)
    assert not set(mias["patient_id"].iloc[train]) & set(mias["patient_id"].iloc[test])
    assert 0.15 < len(test) / len(mias) < 0.25
    again = train_test_split_by_patient(mias, "density", test_size=0.2, seed=1)
    assert np.array_equal(test, again[1])
    other = train_test_split_by_patient(mias, "density", test_size=0.2, seed=2)
    assert not np.array_equal(test, other[1])


def test_split_errors():
    df = pd.DataFrame({"patient_id": ["a", "b"], "density": ["A", None]})
    with pytest.raises(DatasetError, match="no 'density' label"):
        next(patient_folds(df, "density"))
    with pytest.raises(DatasetError, match="no column 'pathology'"):
        next(patient_folds(df, "pathology"))
