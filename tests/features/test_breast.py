"""breast_mask and orient_chest_wall_left on synthetic images and real mini-MIAS / CBIS-DDSM laterality."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.breast import breast_mask, chest_wall_side, orient_chest_wall_left
from pipeline.io.imageio import read_image


def _synthetic(h: int = 200, w: int = 160) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.full((h, w), 0.02, np.float32)
    breast = ((yy - h / 2) ** 2 / (0.45 * h) ** 2 + xx**2 / (0.6 * w) ** 2) < 1
    image[breast] = 0.6
    image[(yy - h / 2) ** 2 + (xx - 20) ** 2 < 100] = 0.1  # a dark lobule inside: a hole to fill
    image[10:30, 120:150] = 0.95  # burned-in film label, separate from the breast
    return image


def test_mask_keeps_breast_fills_holes_drops_label():
    image = _synthetic()
    mask = breast_mask(image)
    assert mask.shape == image.shape and mask.dtype == bool
    assert mask[100, 20] and mask[100, 60]  # lobule filled, tissue kept
    assert not mask[20, 135]  # label removed
    assert not mask[195, 150]  # background


def _digital(h: int = 200, w: int = 160) -> np.ndarray:
    """Flat black background, a breast whose skin rim and centre are bright (as in contrast-enhanced subtracted
    images) and whose tissue by the chest wall (left edge) is dim: half of Otsu over the breast cuts the dim part."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    r = (yy - h / 2) ** 2 / (0.48 * h) ** 2 + xx**2 / (0.8 * w) ** 2
    breast = r < 1
    image = np.zeros((h, w), np.float32)
    image[breast] = rng.uniform(0.04, 0.3, int(breast.sum()))
    bright = breast & ((r > 0.7) | ((xx > 50) & (xx < 100)))
    image[bright] = rng.uniform(0.3, 0.9, int(bright.sum()))
    return image


def test_mask_keeps_dim_tissue_when_the_background_is_flat_black():
    image = _digital()
    breast = image > 0
    old = breast_mask(image, fill_convex=False)
    new = breast_mask(image)
    assert old[breast].mean() < 0.8  # half of Otsu over the breast's own pixels cuts the dim tissue ...
    assert new[breast].mean() > 0.97 and new[~breast].mean() < 0.02  # ... the convex fill gives it back (edges: the
    # 2x nearest-neighbour upsampling of the working mask)


def test_mask_keeps_the_breast_of_real_contrast_enhanced_images(cdd_dir):
    """CDD-CESM subtracted images: the dim tissue by the chest wall stays in the mask (it lost ~40 % before)."""
    for name, lo in (("P317_L_CM_CC", 0.7), ("P309_L_CM_MLO", 0.7), ("P257_L_CM_CC", 0.6)):
        image, _ = read_image(cdd_dir / "images" / f"{name}.png")
        old = breast_mask(image, fill_convex=False).mean()
        new = breast_mask(image).mean()
        assert new >= lo and new > old + 0.1, (name, old, new)


def test_a_textured_subtraction_filling_the_frame_is_masked_not_refused(cdd_dir):
    """CDD-CESM P80_L_CM_CC: the breast fills the frame, dark vessels everywhere split the thresholded tissue into
    pieces (the largest 1 % of the image: refused as 'no breast'); the smoothed pass finds the breast, and scoring
    prepares its samples."""
    from pipeline.samples import make_sample

    path = cdd_dir / "images" / "P80_L_CM_CC.png"
    image, meta = read_image(path)
    oriented, _ = orient_chest_wall_left(image, "L")
    assert breast_mask(oriented, smooth_sigma=0).mean() < 0.02  # what refused it
    assert 0.65 < breast_mask(oriented).mean() < 0.9
    for task in ("density", "screening"):
        sample = make_sample(image, {"path": str(path), "laterality": "L"}, task, size=64, scale=2.0)
        assert sample.std() > 0.05


def test_a_rim_holding_little_of_the_tissue_above_the_threshold_is_not_taken_for_the_breast(cdd_dir):
    """CDD-CESM P118_L_CM_CC fills the frame: the opening cut its textured tissue into pieces and the largest, the
    bright skin line along the lower edge (7 % of the image), was the mask; it held under half of the pixels above
    the threshold, so the smoothed pass runs and its larger mask, across the breast's body, is kept."""
    image, _ = read_image(cdd_dir / "images" / "P118_L_CM_CC.png")
    oriented, _ = orient_chest_wall_left(image, "L")
    rim = breast_mask(oriented, textured_share=0.0)  # the smoothed pass only where nothing breast-sized is found
    mask = breast_mask(oriented)
    assert rim.mean() < 0.1
    assert mask.mean() > 0.3 and mask[rim].mean() > 0.9  # four times larger, and holding the rim
    upper = slice(0, mask.shape[0] // 2)
    assert mask[upper].mean() > 0.1 and not rim[upper].any()  # the body above the middle, which the rim never reached


def test_the_smoothed_pass_leaves_a_lone_label_refused():
    """A bright label on black: smoothing keeps it label-sized, so the mask stays under a breast's share."""
    image = np.zeros((256, 256), np.float32)
    image[10:24, 200:240] = 0.9
    assert breast_mask(image).mean() < 0.02


def test_convex_fill_barely_moves_film_masks(mias_dir):
    """mini-MIAS films: the fill adds at most a sliver (film between pectoral muscle and skin line)."""
    gains = []
    for i in range(1, 323, 16):
        image, _ = read_image(mias_dir / "images" / f"mdb{i:03d}.png")
        gains.append(breast_mask(image).mean() - breast_mask(image, fill_convex=False).mean())
    assert 0 <= min(gains) and np.mean(gains) < 0.04 and max(gains) < 0.1


def test_mask_of_blank_image_is_empty():
    assert not breast_mask(np.zeros((50, 40), np.float32)).any()


def test_mask_errors():
    with pytest.raises(ValueError, match="2D"):
        breast_mask(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="otsu_fraction"):
        breast_mask(np.zeros((8, 8)), otsu_fraction=2.0)
    with pytest.raises(ValueError, match="textured_share"):
        breast_mask(np.zeros((8, 8)), textured_share=1.5)


def test_orientation_flips_right_breasts_and_infers_side():
    image = _synthetic()
    mirrored = image[:, ::-1]
    out, flipped = orient_chest_wall_left(mirrored, "R")
    assert flipped and np.array_equal(out, image)
    out, flipped = orient_chest_wall_left(image, "L")
    assert not flipped and out is image
    assert orient_chest_wall_left(mirrored)[1] and not orient_chest_wall_left(image)[1]
    with pytest.raises(ValueError, match="laterality"):
        orient_chest_wall_left(image, "X")


def test_intensity_rule_agrees_with_laterality_on_real_images(mias_dir, cbis_dir):
    manifest = pd.read_csv(mias_dir / "manifest.csv").drop_duplicates("file").iloc[::8]  # 41 images
    for row in manifest.itertuples():
        image = read_image(mias_dir / row.file)[0][::4, ::4]
        side = chest_wall_side(image, breast_mask(image))
        assert side == ("left" if row.laterality == "L" else "right"), row.file
    cbis = pd.read_csv(cbis_dir / "manifest.csv").drop_duplicates("file").iloc[:2]
    for row in cbis.itertuples():
        image = read_image(cbis_dir / row.file)[0][::8, ::8]
        assert orient_chest_wall_left(image)[1] == (row.laterality == "R"), row.file
