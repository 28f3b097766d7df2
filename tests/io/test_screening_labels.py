"""Screening labels in the adapters: normal images are negatives, one row per image, breasts and exams nest."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.io.datasets.screening import CLASSES, screening_table
from pipeline.io.exams import breast_ids, exam_ids

CDD = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cdd_cesm" / "manifest.csv"


def test_mias_screening_labels_map_normal_images(mias_dir):
    from pipeline.io.datasets import load_dataset, lesion_table

    full = load_dataset("mias", mias_dir)
    table = screening_table(full)
    assert len(table) == table["path"].nunique() == full["path"].nunique()  # one row per image, none unknown
    malignant_paths = set(full.loc[full["pathology"] == "malignant", "path"])
    assert set(table.loc[table["screening"] == CLASSES[1], "path"]) == malignant_paths
    norm = table["abnormality_class"] == "NORM"
    assert norm.any() and (table.loc[norm, "screening"] == CLASSES[0]).all()
    assert lesion_table(full)["pathology"].isin(["benign", "malignant"]).all()  # malignancy task unchanged


@pytest.mark.skipif(not CDD.is_file(), reason="CDD-CESM manifest not in shared/")
def test_cdd_cesm_manifest_accepts_normal_for_screening():
    from pipeline.io.datasets import load_dataset

    full = load_dataset("manifest", CDD)
    assert full["pathology"].dropna().isin(["benign", "malignant"]).all()  # normal stays out of pathology
    table = screening_table(full)
    assert len(table) == 898 and table["patient_id"].nunique() == 272
    assert (table["screening"] == "malignant").sum() == 331
    assert int(full["is_normal"].sum()) == 311


def test_manifest_still_refuses_unknown_pathology(tmp_path):
    from pipeline.io.datasets.manifest import load_manifest
    from pipeline.errors import DatasetError

    (tmp_path / "m.csv").write_text("file,patient_id,pathology\na.png,p1,weird\n")
    with pytest.raises(DatasetError, match="normal"):
        load_manifest(tmp_path / "m.csv")


def test_breast_and_exam_ids_nest_in_patients():
    t = pd.DataFrame({"sample_id": list("abcde"), "patient_id": ["p1", "p1", "p1", "p2", "p2"],
                      "laterality": ["L", "L", "R", "L", np.nan], "exam_id": [np.nan] * 3 + ["e1", "e1"]})
    b, e = breast_ids(t), exam_ids(t)
    assert b[0] == b[1] != b[2] and b[3] != b[4]
    assert len(set(e[:3])) == 1 and e[3] == e[4] and e[0] != e[3]
