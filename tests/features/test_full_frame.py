"""Large breasts filling the frame, exported as screening JPEGs (tests/_full_frame.py), are masked and scored, not
refused; images without a breast to score still are (issue 31: real screening images refused as "no breast")."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from features.breast import breast_mask, contrast_to_noise
from pipeline.errors import NoBreastError
from pipeline.io.imageio import read_image
from pipeline.samples import check_not_blank, find_breast
from tests._full_frame import breast_cases, refusal_cases

# a film (mini-MIAS, left MLO), a contrast-enhanced CC whose dimmed export with a marker was refused before, a
# full-field DICOM (CBIS-DDSM, right MLO)
SOURCES = (("mias", "images/mdb002.png"), ("cdd_cesm", "images/P111_L_CM_CC.png"),
           ("cbis_ddsm", "dicom/sfm-malign-0_1-281.dcm"))


def _score(path):
    """(refusal message or None, read as inverted, mask mirrored back to the file's layout or None)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        image, meta = read_image(path)
    try:
        check_not_blank(image, path)
        _, flipped, mask = find_breast(image, None, path)
    except NoBreastError as exc:
        return str(exc), meta.inverted, None
    return None, meta.inverted, (mask[:, ::-1] if flipped else mask)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    from tests.conftest import DATA_ROOT

    folder = tmp_path_factory.mktemp("full_frame")
    logging.getLogger("pipeline").setLevel(logging.ERROR)
    out = []
    for data, rel in SOURCES:
        path = DATA_ROOT / data / rel
        if not path.is_file():
            pytest.skip(f"real data file {path} is absent")
        image, _ = read_image(path)
        for case in breast_cases(image, path.stem):
            refused, inverted, mask = _score(case.write(folder))
            kept = float(mask[case.truth].mean()) if mask is not None else 0.0
            extra = float((mask & ~case.truth).mean()) if mask is not None else 0.0
            out.append((case.name, refused, inverted, kept, extra))
    logging.getLogger("pipeline").setLevel(logging.NOTSET)
    return out


def test_no_full_frame_export_is_refused(results):
    assert len(results) == 3 * 48
    refused = [(name, msg) for name, msg, *_ in results if msg]
    assert not refused, refused[:5]


def test_mask_covers_the_breast_when_the_polarity_is_read_right(results):
    """Where the polarity check leaves the export as stored, the mask keeps nearly all the reference breast and adds
    little (the reference: the mask of the uncropped original, cropped the same way)."""
    right = [(name, kept, extra) for name, _, inverted, kept, extra in results if not inverted]
    assert len(right) >= 0.75 * len(results)
    kept = np.array([k for _, k, _ in right])
    extra = np.array([e for _, _, e in right])
    assert np.median(kept) > 0.95 and kept.min() > 0.8, min(right, key=lambda r: r[1])
    assert extra.max() < 0.1, max(right, key=lambda r: r[2])


def test_markers_and_dim_exports_are_masked_on_the_breast(results):
    """The kind refused before the fix: a dim export whose saturated corner marker is its brightest object."""
    marked = [(name, kept) for name, _, inverted, kept, _ in results
              if "_marker" in name and "_dim" in name and not inverted]
    assert len(marked) >= 12
    assert min(kept for _, kept in marked) > 0.8, marked


def test_images_without_a_breast_are_still_refused(tmp_path, mias_dir):
    image, _ = read_image(mias_dir / "images" / "mdb002.png")
    expected = {"blank_black": "image is blank", "blank_grey": "image is blank", "label_only": "no breast found",
                "label_and_marker": "no breast found", "empty_detector": "stands out of the noise",
                "empty_detector_seam_marker": "stands out of the noise", "near_black_export": "image is blank"}
    cases = refusal_cases(image)
    assert sorted(c.name for c in cases) == sorted(expected)
    for case in cases:
        refused, _, _ = _score(case.write(tmp_path))
        assert refused is not None and expected[case.name] in refused, (case.name, refused)


def test_a_marker_brighter_than_the_breast_does_not_take_the_mask(cdd_dir):
    """A dim export (brightest tissue near half the scale) and a saturated corner square: Otsu over all pixels puts
    its threshold between the two and keeps the square alone; it is set aside and the breast thresholded again, so
    the mask is the one the export has without the marker."""
    image, _ = read_image(cdd_dir / "images" / "P111_L_CM_CC.png")
    dim = 0.5 * image**1.5
    plain = breast_mask(dim)
    dim[10:30, 480:500] = 1.0
    mask = breast_mask(dim)
    assert plain.mean() > 0.5 and not mask[10:30, 480:500].any()
    assert (mask & plain).sum() / (mask | plain).sum() > 0.95
    assert breast_mask(dim, max_peel=0).mean() < 0.01  # without setting it aside: the square alone


def test_contrast_to_noise_separates_a_breast_from_an_empty_detector(mias_dir):
    rng = np.random.default_rng(0)
    empty = np.clip(0.3 + 0.02 * rng.standard_normal((512, 400)), 0, 1).astype(np.float32)
    assert contrast_to_noise(empty) < 2
    image, _ = read_image(mias_dir / "images" / "mdb002.png")
    assert contrast_to_noise(image) > 50
    noisy = np.clip(image + 0.02 * rng.standard_normal(image.shape), 0, 1).astype(np.float32)
    assert contrast_to_noise(noisy) > 10  # a noisy breast is still a breast
    assert contrast_to_noise(np.zeros((64, 64), np.float32)) == 0.0


def test_the_breast_mask_transformer_cache_key_follows_the_mask_code():
    """A change of features/breast.py must invalidate cached BreastMask outputs (its code version names it)."""
    from features.masking import BreastMask
    from pipeline.model.estimators import code_version

    assert "features.breast:" in code_version(BreastMask())
