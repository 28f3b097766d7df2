"""Full-frame screening exports made from real development images, for the breast-mask refusal checks (issue 31).

External screening sets hold 640 px JPEG re-exports of large breasts that fill most of the frame, the chest wall on
either side, a small burned-in marker in a corner and, on some detectors, a visible edge where two detector halves
meet. :func:`breast_cases` rebuilds that kind from one real image: the breast cropped to fill a given share of the
frame, mirrored or not, a saturated square marker in a top corner, a seam, dimmed or brightened, re-exported as JPEG
with its long side 640 px. Each case carries the reference breast (the mask of the uncropped original, cropped and
resized the same way) so a test can check the mask, not only that no error was raised. :func:`refusal_cases` gives
the images that must still be refused: blank, a lone label, an empty detector, a near-black export.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image

from features.breast import breast_mask

__all__ = ["FullFrameCase", "breast_cases", "refusal_cases", "fill_crop", "jpeg_640", "EXPOSURES"]

EXPOSURE_NAMES = ("plain", "dim", "bright")
EXPOSURES = {  # grey level x in [0, 1] -> exported level: a dim export (low gain, dark tissue), a bright one (clipped)
    "plain": lambda x: x,
    "dim": lambda x: 0.5 * x**1.5,
    "bright": lambda x: np.minimum(1.0, 1.3 * x**0.7),
}


@dataclass(frozen=True)
class FullFrameCase:
    """One JPEG export: its name, its bytes, the reference breast mask at the JPEG's size (None: must be refused)."""

    name: str
    jpeg: bytes
    truth: np.ndarray | None

    def write(self, folder: Path) -> Path:
        """Write the JPEG under `folder` as NAME.jpg; returns its path."""
        path = Path(folder) / f"{self.name}.jpg"
        path.write_bytes(self.jpeg)
        return path


def _resize(array: np.ndarray, shape: tuple[int, int], nearest: bool = False) -> np.ndarray:
    mode = Image.NEAREST if nearest else Image.BILINEAR
    if array.dtype == bool:
        return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(shape[::-1], Image.NEAREST)) > 127
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(shape[::-1], mode), np.float32)


def jpeg_640(image: np.ndarray, quality: int = 90) -> tuple[bytes, tuple[int, int]]:
    """(JPEG bytes, (H, W)) of a float image in [0, 1] resized so its long side is 640 px, 8-bit."""
    from pipeline.io.reexport import jpeg_export

    return jpeg_export(image, 640, quality)


def fill_crop(mask: np.ndarray, fill: float) -> tuple[slice, slice]:
    """(rows, cols) of a crop of `mask`'s bounding box in which the breast covers at least `fill` of the frame.

    The box is narrowed from the nipple side (the side away from the chest wall) and from top and bottom equally,
    so the breast keeps touching the chest-wall border, as in a large breast imaged on a small detector.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    h, w = r1 - r0, c1 - c0
    edge = max(1, w // 10)
    wall_left = mask[r0:r1, c0:c0 + edge].mean() >= mask[r0:r1, c1 - edge:c1].mean()
    sums = np.pad(np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1), ((1, 0), (1, 0)))  # box sums
    best, best_area = None, 0
    for across, down in product(np.arange(0.0, 0.9, 0.02), repeat=2):  # the largest crop that reaches `fill`
        top, bottom = r0 + int(down * h / 2), r1 - int(down * h / 2)
        left, right = (c0, c1 - int(across * w)) if wall_left else (c0 + int(across * w), c1)
        area = (bottom - top) * (right - left)
        inside = sums[bottom, right] - sums[top, right] - sums[bottom, left] + sums[top, left]
        if area > best_area and inside >= fill * area:
            best, best_area = (slice(top, bottom), slice(left, right)), area
    if best is None:
        raise ValueError(f"no crop of this breast reaches a fill of {fill}")
    return best


def _marker(image: np.ndarray, wall_left: bool) -> None:
    """Paste a saturated square (4 % of the short side) in the top corner away from the chest wall, in place."""
    h, w = image.shape
    side, gap = max(4, int(0.04 * min(h, w))), max(2, int(0.02 * min(h, w)))
    cols = slice(w - gap - side, w - gap) if wall_left else slice(gap, gap + side)
    image[gap:gap + side, cols] = 1.0


def _seam(image: np.ndarray) -> None:
    """Two detector halves with different gain and offset, meeting at a one-row dark line, in place."""
    h = image.shape[0]
    image[h // 2:] = np.clip(0.9 * image[h // 2:] + 0.03, 0.0, 1.0)
    image[h // 2] *= 0.5


def breast_cases(image: np.ndarray, name: str, *, fills: tuple[float, ...] = (0.8, 0.95),
                 mirrors: tuple[bool, ...] = (False, True), markers: tuple[bool, ...] = (False, True),
                 seams: tuple[bool, ...] = (False, True), exposures: tuple[str, ...] = EXPOSURE_NAMES
                 ) -> list[FullFrameCase]:
    """Full-frame JPEG exports of the real float (H, W) `image` (every combination of the options) with their
    reference breast masks; the breast is found on the uncropped original (features.breast.breast_mask)."""
    image = np.asarray(image, np.float32)
    if max(image.shape) > 1280:  # a full-field DICOM: the exports are 640 px, the crop needs no more than 1280
        step = int(np.ceil(max(image.shape) / 1280))
        image = _resize(image, (image.shape[0] // step, image.shape[1] // step))
    reference = breast_mask(image)
    out = []
    for fill, mirror, marker, seam, exposure in product(fills, mirrors, markers, seams, exposures):
        rows, cols = fill_crop(reference, fill)
        frame = np.asarray(image[rows, cols], np.float32)
        truth = reference[rows, cols]
        edge = max(1, truth.shape[1] // 10)
        wall_left = truth[:, :edge].mean() >= truth[:, -edge:].mean()
        if mirror:
            frame, truth, wall_left = frame[:, ::-1], truth[:, ::-1], not wall_left
        frame = EXPOSURES[exposure](frame).astype(np.float32)
        if seam:
            _seam(frame)
        if marker:
            _marker(frame, wall_left)
        jpeg, shape = jpeg_640(frame)
        tag = f"{name}_fill{round(fill * 100)}{'_mirror' if mirror else ''}{'_marker' if marker else ''}" \
              f"{'_seam' if seam else ''}_{exposure}"
        out.append(FullFrameCase(tag, jpeg, _resize(np.ascontiguousarray(truth), shape, nearest=True)))
    return out


def refusal_cases(breast: np.ndarray, seed: int = 0) -> list[FullFrameCase]:
    """Images that hold no breast to score, 640 x 512 JPEG: blank black and grey, a lone label (with and without a
    marker), an empty detector (flat with noise, with a seam), and the real float `breast` exported near black
    (brightest pixel 8 of 255)."""
    rng = np.random.default_rng(seed)
    h, w = 640, 512
    cases: dict[str, np.ndarray] = {
        "blank_black": np.zeros((h, w), np.float32),
        "blank_grey": np.full((h, w), 0.5, np.float32),
    }
    label = np.zeros((h, w), np.float32)
    label[30:60, 360:480] = 1.0
    cases["label_only"] = label
    label_marker = label.copy()
    _marker(label_marker, wall_left=False)
    cases["label_and_marker"] = label_marker
    empty = np.clip(0.15 + 0.03 * rng.standard_normal((h, w)), 0, 1).astype(np.float32)  # a flat, noisy field
    cases["empty_detector"] = empty
    seamed = empty.copy()
    _seam(seamed)
    _marker(seamed, wall_left=True)
    cases["empty_detector_seam_marker"] = seamed
    dark = np.asarray(breast, np.float32)
    cases["near_black_export"] = np.floor(dark / max(float(dark.max()), 1e-6) * 8.0) / 255.0
    out = []
    for name, frame in cases.items():
        jpeg, _ = jpeg_640(frame)
        out.append(FullFrameCase(name, jpeg, None))
    return out
