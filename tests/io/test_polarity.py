"""Polarity from the pixels (features.polarity) and its use in read_image: inverted exports are turned back, warned
about and give the sample of the original; a DICOM whose photometric tag contradicts its pixels is corrected."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from features.polarity import background_shares, is_inverted, polarity_margin
from pipeline.io.imageio import PIXEL_POLARITY_MARGIN, read_image
from pipeline.samples import make_sample


def _disc(h: int = 120, w: int = 100, touch: str = "left") -> np.ndarray:
    """A textured bright half-disc (the breast) against the `touch` border on a dark, slightly noisy background."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    x = xx if touch == "left" else (w - 1 - xx)
    disc = ((yy - h / 2) ** 2 + x**2) < (0.45 * h) ** 2
    return np.where(disc, 0.5 + 0.4 * rng.random((h, w)), 0.03 * rng.random((h, w))).astype(np.float32)


def test_hand_made_breast_and_its_inverse():
    image = _disc()
    dark, bright = background_shares(image)
    assert dark > 0.1 and bright < 0.01  # the background is the dark, border-connected end (shape-weighted)
    assert not is_inverted(image) and is_inverted(1.0 - image)
    assert polarity_margin(1.0 - image) == pytest.approx(-polarity_margin(image), abs=0.02)


def test_label_marker_and_three_borders_do_not_fool_it():
    image = _disc(touch="right")
    image[5:20, 5:40] = 1.0  # a burnt-in white film label in the background
    image[100:106, 80:86] = 1.0  # a lead marker
    assert not is_inverted(image) and is_inverted(1.0 - image)
    big = np.full((100, 100), 0.02, np.float32)  # breast against the top, left and bottom borders, dense
    big[:, :70] = 0.85 + 0.1 * np.random.default_rng(1).random((100, 70))
    assert not is_inverted(big) and is_inverted(1.0 - big)


def test_uniform_image_has_no_background_and_is_never_inverted():
    assert background_shares(np.full((50, 50), 0.7, np.float32)) == (0.0, 0.0)
    assert not is_inverted(np.ones((50, 50), np.float32))
    with pytest.raises(ValueError, match="min_margin"):
        is_inverted(_disc(), min_margin=1.5)
    with pytest.raises(ValueError, match="2D"):
        background_shares(np.zeros((3, 3, 3)))


@pytest.mark.slow
def test_every_mias_image_and_its_inverse_is_judged_right(mias_dir):
    """All 322 mini-MIAS images: normal as stored, inverted once flipped (644 decisions, about 5 s)."""
    wrong = []
    paths = sorted((mias_dir / "images").glob("mdb*.png"))
    assert len(paths) == 322
    for path in paths:
        with Image.open(path) as im:
            image = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
        if is_inverted(image):
            wrong.append(f"{path.stem} judged inverted")
        if not is_inverted(1.0 - image, min_margin=PIXEL_POLARITY_MARGIN):  # as read_image decides
            wrong.append(f"{path.stem} inverse judged normal")
    assert not wrong, wrong


def _read_with_inverse(source, tmp_path):
    """(original image, its meta, image read back from an inverted PNG copy, that meta); the inverse warns."""
    with Image.open(source) as im:
        pixels = np.asarray(im.convert("L"))
    inverted_path = tmp_path / f"{source.stem}_inverted.png"
    Image.fromarray(255 - pixels).save(inverted_path)
    original, meta0 = read_image(source)
    with pytest.warns(UserWarning, match="inverted"):
        image, meta = read_image(inverted_path)
    return original, meta0, image, meta


@pytest.mark.parametrize("ref", ["mdb001", "mdb030", "mdb134"])  # right fatty, left fatty-glandular, dense
def test_inverted_png_gives_the_sample_of_the_original(mias_dir, tmp_path, ref):
    original, meta0, image, meta = _read_with_inverse(mias_dir / "images" / f"{ref}.png", tmp_path)
    assert not meta0.inverted and meta0.inverted_by is None and not meta0.warnings
    assert meta.inverted and meta.inverted_by == "pixels"
    assert any("inverted" in w for w in meta.warnings)
    for task, row in (("density", {"sample_id": ref}),):
        a = make_sample(original, row, task, size=224)
        b = make_sample(image, row, task, size=224)  # no laterality: orientation from the pixels too
        assert float(np.abs(a - b).mean()) <= 0.02


def test_dicom_with_a_flipped_photometric_tag_is_corrected(cbis_dir, tmp_path):
    """A real CBIS-DDSM DICOM (RLE, MONOCHROME2) relabelled MONOCHROME1: the pixels overrule the tag, with a warning."""
    source = cbis_dir / "dicom" / "sfm-benign-0_1-130.dcm"
    ds = pydicom.dcmread(source)
    ds.PhotometricInterpretation = "MONOCHROME1"
    flipped = tmp_path / "flipped_tag.dcm"
    ds.save_as(flipped)
    original, meta0 = read_image(source)
    with pytest.warns(UserWarning, match="MONOCHROME1.*contradicts the pixels"):
        image, meta = read_image(flipped)
    assert meta0.inverted_by is None and not meta0.inverted
    assert meta.photometric == "MONOCHROME1" and meta.inverted_by == "pixels" and not meta.inverted
    assert any("contradicts" in w for w in meta.warnings)
    row = {"sample_id": "cbis", "laterality": meta0.laterality}
    a = make_sample(original, row, "density", size=224)
    b = make_sample(image, row, "density", size=224)
    assert float(np.abs(a - b).mean()) <= 0.02


def test_dicom_tag_that_agrees_with_the_pixels_decides(cbis_dir, tmp_path):
    """Stored values inverted and tagged MONOCHROME1 (a true MONOCHROME1 file): the tag decides, no warning."""
    source = cbis_dir / "dicom" / "sfm-benign-0_1-130.dcm"
    ds = pydicom.dcmread(source)
    stored = ds.pixel_array
    top = int(2 ** int(ds.BitsStored) - 1)
    ds.set_pixel_data((top - stored).astype(stored.dtype), photometric_interpretation="MONOCHROME1",
                      bits_stored=int(ds.BitsStored))
    path = tmp_path / "true_m1.dcm"
    ds.save_as(path)
    original, _ = read_image(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image, meta = read_image(path)
    assert meta.inverted and meta.inverted_by == "tag" and not meta.warnings
    np.testing.assert_allclose(image, original, atol=1e-5)


def test_float_tiff_with_nan_is_cleaned_with_a_warning(tmp_path):
    import tifffile

    image = _disc()
    image[10:14, 60:70] = np.nan
    image[0, 0] = np.inf
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, image)
    with pytest.warns(UserWarning, match="41 non-finite pixel"):
        read, meta = read_image(path)
    assert np.isfinite(read).all() and 0.0 <= read.min() <= read.max() <= 1.0
    assert any("non-finite" in w for w in meta.warnings)


def test_all_nan_tiff_is_refused(tmp_path):
    import tifffile

    from pipeline.errors import ImageReadError

    path: Path = tmp_path / "all_nan.tif"
    tifffile.imwrite(path, np.full((64, 64), np.nan, np.float32))
    with pytest.raises(ImageReadError, match="every pixel is NaN"):
        read_image(path)


@pytest.mark.slow
def test_every_tenth_mias_image_inverted_gives_its_original_sample(mias_dir, tmp_path):
    """33 real images across tissue types and both sides: inverted PNG -> same 224 px sample (MAD <= 0.02)."""
    worst = {}
    for number in range(1, 323, 10):
        source = mias_dir / "images" / f"mdb{number:03d}.png"
        original, _, image, meta = _read_with_inverse(source, tmp_path)
        assert meta.inverted_by == "pixels", source.stem
        row = {"sample_id": source.stem}
        worst[source.stem] = float(np.abs(make_sample(original, row, "density", size=224)
                                          - make_sample(image, row, "density", size=224)).mean())
    bad = {k: v for k, v in worst.items() if v > 0.02}
    assert not bad, bad
