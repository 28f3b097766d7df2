"""Working-resolution samples: density crops and ROI crops centred on the lesion, flipped correctly."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from pipeline.io.datasets import load_dataset
from pipeline.io.imageio import read_image
from pipeline.samples import load_samples, make_sample


def test_roi_crop_is_centred_on_the_lesion_and_flipped(mias_dir):
    table = load_dataset("mias", mias_dir)
    row = table[table["image_id"] == "mdb001"].iloc[0].to_dict()  # right breast: image is mirrored
    image, _ = read_image(row["path"])
    assert row["laterality"] == "R"
    sample = make_sample(image, row, "malignancy", size=64, context=1.0, min_side=1)
    # expected: the same square cut directly from the mirrored original around the mirrored centre
    side = int(round(2 * row["roi_r"]))
    cx = 1023 - row["roi_cx"]
    x0, y0 = int(round(cx - side / 2)), int(round(row["roi_cy"] - side / 2))
    mirrored = image[:, ::-1]
    direct = mirrored[max(y0, 0) : y0 + side, max(x0, 0) : x0 + side]
    from pipeline.samples import resize_square

    assert direct.shape == (side, side)
    ref = resize_square(direct, 64)
    inside = sample > 0  # the breast mask zeroes background only
    assert inside.mean() > 0.6
    diff = np.abs(sample - ref)[inside]
    assert np.median(diff) < 1e-5 and diff.mean() < 0.02  # equal except where the mask edge blends in
    unflipped = image[max(y0, 0) : y0 + side, max(x0, 0) : x0 + side]
    assert np.abs(resize_square(unflipped, 64) - sample).mean() > 0.05  # the unmirrored crop is elsewhere


def test_roi_crop_pads_at_the_border():
    image = np.full((100, 100), 0.5, np.float32)
    image[:, 60:] = 0.0
    row = {"sample_id": "s", "laterality": "L", "roi_kind": "box", "roi_x0": 0, "roi_y0": 0, "roi_x1": 20, "roi_y1": 20}
    sample = make_sample(image, row, "malignancy", size=40, context=2.0, min_side=10)
    assert sample.shape == (40, 40)
    assert sample[:9, :].max() == 0.0 and sample[:, :9].max() == 0.0 and sample[11:, 11:].min() > 0.4  # padded top-left, tissue bottom-right


def test_density_sample_pads_not_stretches(tmp_images):
    image = np.zeros((200, 100), np.float32)
    image[20:180, :60] = 0.7
    sample = make_sample(image, {"sample_id": "d", "laterality": "L"}, "density", size=80)
    assert sample.shape == (80, 80)
    cols = np.flatnonzero(sample.max(axis=0) > 0.3)
    assert cols[0] == 0 and 25 <= cols[-1] <= 35  # 60 of 160 px wide -> 30 of 80, against the left edge
    assert sample[:, 40:].max() == 0.0


def test_load_samples_reports_rows_without_roi(mias_dir):
    table = load_dataset("mias", mias_dir).head(4)  # mdb001, 002 have ROIs; 003, 004 are normal
    X, errors = load_samples(table, "malignancy", size=32)
    assert X.shape == (2, 32 * 32) and X.dtype == np.float32
    assert errors["position"].tolist() == [2, 3] and errors["error"].str.contains("no ROI").all()
    Xd, errors_d = load_samples(table, "density", size=32, n_jobs=2)
    assert Xd.shape == (4, 1024) and errors_d.empty and 0.0 <= Xd.min() and Xd.max() <= 1.0


def test_findings_without_roi_are_whole_breast_samples_only_when_allowed(mias_dir):
    """The 4 mini-MIAS calcifications without a centre: error rows for lesion crops, whole-breast samples (the same
    as predict makes for an image given without an ROI) when dataset.require_roi is false."""
    table = load_dataset("mias", mias_dir)
    rows = table[table["pathology"].notna() & table["roi_kind"].isna()].reset_index(drop=True)
    assert len(rows) == 4
    X, errors = load_samples(rows, "malignancy", size=64)
    assert len(X) == 0 and len(errors) == 4 and errors["error"].str.contains("has no ROI").all()
    X, errors = load_samples(rows, "malignancy", size=64, whole_breast_without_roi=True)
    whole, _ = load_samples(rows, "density", size=64)
    assert errors.empty and np.array_equal(X, whole)
    lesions = table[table["roi_kind"].notna()].head(3)
    crops, _ = load_samples(lesions, "malignancy", size=64, whole_breast_without_roi=True)
    assert np.array_equal(crops, load_samples(lesions, "malignancy", size=64)[0])  # ROIs still give crops


def test_cbis_findings_without_masks_name_the_missing_rois(cbis_dir):
    from pipeline.errors import DatasetError
    from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
    from pipeline.training.train import load_task_data

    exp = load_experiment(EXPERIMENTS_DIR / "cbis_ddsm_malignancy.yaml", [f"dataset.path={cbis_dir}",
                                                                            "samples.n_jobs=1", "samples.size=64"])
    with pytest.raises(DatasetError, match="10 of them have no ROI .* dataset.require_roi=false"):
        load_task_data(exp.config, lambda s: None)
    exp = load_experiment(EXPERIMENTS_DIR / "cbis_ddsm_malignancy.yaml", [f"dataset.path={cbis_dir}",
                                                                            "samples.n_jobs=1", "samples.size=64",
                                                                            "dataset.require_roi=false"])
    data = load_task_data(exp.config, lambda s: None)
    assert data.X.shape == (10, 64 * 64) and set(data.classes[i] for i in data.y) == {"benign", "malignant"}


@pytest.mark.parametrize("low, high", [(0, 1), (0, 255), (0, 65535)])
def test_mask_box_reads_any_two_valued_mask_and_tiny_findings(tmp_path, low, high):
    """0/1, 0/255 and 16-bit masks give the same box; a 3 x 3 calcification in a large mask is found; a mask the
    size of half the image is scaled; grey crops and inverted masks are passed over with the reason given."""
    from PIL import Image

    from pipeline.errors import ImageReadError
    from pipeline.samples import mask_box

    mask = np.full((1500, 1300), low, np.uint16 if high > 255 else np.uint8)
    mask[700:703, 400:403] = high
    Image.fromarray(mask).save(tmp_path / "mask.png")
    grey = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "crop.png")
    paths = os.pathsep.join([str(tmp_path / "crop.png"), str(tmp_path / "mask.png")])
    assert mask_box(paths, (3000, 2600)) == pytest.approx((800.0, 1400.0, 806.0, 1406.0))
    Image.fromarray(np.where(mask == high, low, high).astype(mask.dtype)).save(tmp_path / "inverted.png")
    with pytest.raises(ImageReadError, match="inverted mask.*not a binary mask|not a binary mask.*inverted mask"):
        mask_box(os.pathsep.join([str(tmp_path / "inverted.png"), str(tmp_path / "crop.png")]), (3000, 2600))


def test_models_sharing_an_image_find_its_breast_once_and_get_the_same_samples(mias_dir, monkeypatch):
    import pipeline.samples as samples
    from pipeline.serving.predict import SampleSpec

    image, meta = read_image(mias_dir / "images" / "mdb001.png")
    specs = [SampleSpec("density", {"size": 64}), SampleSpec("screening", {"size": 64, "scale": 2.0})]
    alone = [s.prepare(image, meta).array for s in specs]
    calls = {"mask": 0, "cnr": 0}
    real_mask, real_cnr = samples.breast_mask, samples.contrast_to_noise
    monkeypatch.setattr(samples, "breast_mask", lambda *a, **k: calls.__setitem__("mask", calls["mask"] + 1)
                        or real_mask(*a, **k))
    monkeypatch.setattr(samples, "contrast_to_noise", lambda *a, **k: calls.__setitem__("cnr", calls["cnr"] + 1)
                        or real_cnr(*a, **k))
    with samples.shared_breast_finding():
        shared = [s.prepare(image, meta).array for s in specs]
    assert calls == {"mask": 1, "cnr": 1}  # once for both models
    for a, b in zip(alone, shared):
        np.testing.assert_array_equal(a, b)
    [s.prepare(image, meta) for s in specs]  # outside the block nothing is kept
    assert calls == {"mask": 3, "cnr": 3}
    other = np.ascontiguousarray(image[:, ::-1])  # another image in the same block is measured on its own
    with samples.shared_breast_finding():
        specs[0].prepare(image, meta), specs[0].prepare(other, meta)
    assert calls == {"mask": 5, "cnr": 5}
