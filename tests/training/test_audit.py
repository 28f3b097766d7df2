"""The training-time shortcut audit (pipeline.training.audit): on a CDD-CESM development set built with the external
set's artefact (the contralateral breast of every malignant exam dropped) it names the view count; on CDD-CESM as
published it names nothing; a real training run writes it to the MLflow run and the model card."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.splits import patient_stratified_folds
from pipeline.training.audit import audit_candidates_of, shortcut_audit


@pytest.fixture(scope="module")
def cdd(cdd_dir):
    """CDD-CESM screening rows (one per image; no pixel read) and their labels."""
    from pipeline.io.datasets import load_dataset
    from pipeline.io.datasets.screening import screening_table

    table = screening_table(load_dataset("manifest", cdd_dir / "manifest.csv"))
    return table, (table["screening"] == "malignant").to_numpy(int)


def _audit(table, y):
    groups = table["patient_id"].astype(str).to_numpy()
    return shortcut_audit(table, y, patient_stratified_folds(y, groups, 5, 0), n_resamples=300)


def test_the_audit_names_the_view_count_of_the_artefact_set_and_nothing_on_the_published_one(cdd):
    from benchmarks.shortcut import artefact_rows

    table, y = cdd
    rows = artefact_rows(table, y)
    art, y_art = table.iloc[rows].reset_index(drop=True), y[rows]
    assert y_art.sum() == y.sum() and len(art) < len(table)  # only cancer-free breasts of cancer exams dropped
    audit = _audit(art, y_art)
    assert {"breasts_per_exam", "images_per_exam"} <= set(audit.flagged)
    found = {r.name: r for r in audit.results}
    assert found["breasts_per_exam"].roc_auc > 0.8 and found["breasts_per_exam"].low > 0.5
    assert any("'breasts_per_exam'" in w and "predicts the label" in w for w in audit.warnings())
    plain = _audit(table, y)
    assert plain.flagged == [], plain.to_dict()
    for name in ("images_per_exam", "breasts_per_exam", "view", "laterality", "column_machine"):
        assert abs({r.name: r for r in plain.results}[name].roc_auc - 0.5) < 0.07, name
    assert plain.metrics()["audit_flagged"] == 0 and "audit_images_per_exam_roc_auc" in plain.metrics()


def test_candidates_come_from_the_table_and_the_file_headers(cdd):
    table, _ = cdd
    names = {c.name: c for c in audit_candidates_of(table.head(40))}
    assert {"images_per_exam", "images_per_breast", "breasts_per_exam", "image_size", "aspect", "bit_depth",
            "file_format", "file_name", "folder", "view", "laterality", "column_machine"} <= set(names)
    assert "column_source_image_name" not in names  # an image's own name is no site
    assert np.all(np.asarray(names["image_size"].values) == 512)  # from the PNG headers
    assert names["file_name"].values[0] == "p 100 l cm cc"  # letters and digits apart
    # sizes a dataset scan already measured win over the headers; the format and scanner still come from the files
    scanned = {c.name: c for c in audit_candidates_of(table.head(4).assign(height=[10, 20, 30, 40], width=5))}
    assert np.asarray(scanned["image_size"].values)[:, 0].tolist() == [10, 20, 30, 40]
    assert {"bit_depth", "file_format"} <= set(scanned) and set(scanned["file_format"].values) == {"png"}


def test_folder_and_site_columns_are_candidates(tmp_path):
    from PIL import Image

    rows = []
    for i in range(8):
        site = "diagnostic" if i % 2 else "screening"
        (tmp_path / site).mkdir(exist_ok=True)
        path = tmp_path / site / f"case{i}.png"
        Image.fromarray(np.zeros((8 + i, 8), np.uint8)).save(path)
        rows.append({"sample_id": f"s{i}", "path": str(path), "patient_id": f"p{i}", "laterality": "L",
                     "view": "CC", "Scanner Model": f"m{i % 2}"})
    names = {c.name: c for c in audit_candidates_of(pd.DataFrame(rows))}
    assert list(names["folder"].values) == ["screening", "diagnostic"] * 4
    assert list(names["column_Scanner Model"].values) == ["m0", "m1"] * 4
    assert np.asarray(names["aspect"].values)[1] == pytest.approx(9 / 8)


def test_audit_metric_names_are_ones_mlflow_accepts():
    """A manifest column such as 'Scanner (model)' is a site candidate; its metric name must not stop the run."""
    from mlflow.utils.validation import _validate_metric_name

    from pipeline.evaluation.audit import CandidateResult
    from pipeline.training.audit import ShortcutAudit

    result = CandidateResult("column_Scanner (model)", "category", "table column", roc_auc=0.55, low=0.5, high=0.6)
    audit = ShortcutAudit(results=[result], max_auc=0.6)
    names = [n for n in audit.metrics() if n != "audit_flagged"]
    assert names == ["audit_column_Scanner _model__roc_auc", "audit_column_Scanner _model__roc_auc_ci_low",
                     "audit_column_Scanner _model__roc_auc_ci_high"]
    for n in names:
        _validate_metric_name(n)


@pytest.mark.slow
def test_a_training_run_writes_the_audit_to_the_run_and_the_card(tiny_store):
    import json

    import registry
    from pipeline.config.card_render import render_html, render_markdown
    from registry.store import client

    registry.configure(tiny_store.tracking_uri)
    result = tiny_store.results["malignancy"]
    assert any(line.startswith("shortcut audit:") for line in tiny_store.lines["malignancy"])
    assert "audit_flagged" in result_metrics(result.run_id)
    local = client().download_artifacts(result.run_id, "audit/shortcut_audit.json")
    logged = json.loads(open(local).read())
    card = registry.load_card(tiny_store.names["malignancy"], "champion")
    assert card["extra"]["shortcut_audit"] == logged
    assert {c["name"] for c in logged["candidates"]} >= {"images_per_exam", "file_name", "laterality"}
    md = render_markdown(card)
    assert "## Shortcut audit" in md and "<h2>Shortcut audit</h2><ul>" in render_html(card, {})
    assert tiny_store.results["density"].metrics.get("audit_flagged") is None  # density: not a binary task


def result_metrics(run_id):
    from registry.store import client

    return client().get_run(run_id).data.metrics


def test_the_card_renders_the_audit_with_a_table_and_names_what_is_flagged():
    from pipeline.config.card_render import render_html, render_markdown
    from tests._cards import card as make_card

    plain = make_card("screening", ["not_malignant", "malignant"], threshold=0.3).to_dict()
    card = {**plain, "extra": {"shortcut_audit": {
        "max_auc": 0.6, "rule": "flagged when ...", "flagged": ["breasts_per_exam"],
        "candidates": [{"name": "breasts_per_exam", "kind": "numeric", "what": "breasts in the exam", "roc_auc": 0.9,
                        "ci_low": 0.87, "ci_high": 0.92, "flagged": True, "skipped": None},
                       {"name": "bit_depth", "kind": "numeric", "what": "bits", "roc_auc": None, "ci_low": None,
                        "ci_high": None, "flagged": False, "skipped": "the same for every image"}]}}}
    md = render_markdown(card)
    section = md.split("## Shortcut audit")[1].split("\n## ")[0]
    assert "**Warning**: breasts_per_exam predicts the label" in section
    assert "| breasts_per_exam (breasts in the exam) | 0.900 [0.870, 0.920] | FLAGGED |" in section
    assert "Not tested: bit_depth (the same for every image)" in section
    page = render_html(card, {})
    assert "<h2>Shortcut audit</h2><ul><li><b>Warning</b>" in page and "<td>FLAGGED</td>" in page
    assert "## Shortcut audit" not in render_markdown(plain)  # no audit, no section
