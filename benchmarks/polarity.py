"""Polarity from the pixels on every real image here, stored and inverted: errors, the smallest margin, the time.

Run: ``python benchmarks/polarity.py [--cesm-step 1] [--full-frame 8]``. Prints, per data set, how many of the images
and of their inverses are judged wrong, the smallest |margin| (features.polarity.polarity_margin; read_image inverts a non-DICOM
image past pipeline.io.imageio.PIXEL_POLARITY_MARGIN and overrules a DICOM tag past TAG_OVERRULE_MARGIN) and the time per
decision (the image is already in memory; the decision downsamples it first). With ``--full-frame STEP`` it then
does the same for the full-frame JPEG exports of every STEP-th mini-MIAS image, every 3 x STEP-th CDD-CESM image and
every CBIS-DDSM DICOM (tests/_full_frame.breast_cases, 48 each) and their inverses, with the shape weight
(features.polarity, geometry=True, the default) and without it (as before issue 31), counting a decision right
only past PIXEL_POLARITY_MARGIN as read_image does: an export read as inverted, an inverse left as stored.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's features/, not this folder's features.py
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from features.polarity import polarity_margin  # noqa: E402
from pipeline.io.imageio import PIXEL_POLARITY_MARGIN, TAG_OVERRULE_MARGIN, read_image  # noqa: E402
from pipeline.paths import default_data_root  # noqa: E402


def full_frame(root: Path, step: int) -> None:
    """Print, per data set, the full-frame exports read as inverted and the inverses left as stored, before/after."""
    import io

    from PIL import Image

    from tests._full_frame import breast_cases

    sets = {
        "mini-MIAS": sorted((root / "mias" / "images").glob("mdb*.png"))[::step],
        "CDD-CESM": sorted((root / "cdd_cesm" / "images").glob("*.png"))[:: step * 3],
        "CBIS-DDSM": sorted((root / "cbis_ddsm" / "dicom").glob("*.dcm")),
    }
    for name, paths in sets.items():
        counts = {g: [0, 0] for g in (False, True)}
        worst = {g: [] for g in (False, True)}
        total = 0
        for path in paths:
            image, _ = read_image(Path(path))
            try:
                cases = breast_cases(image, Path(path).stem)
            except ValueError:  # a breast too thin or ragged for a 95 % crop
                continue
            for case in cases:
                export = np.asarray(Image.open(io.BytesIO(case.jpeg)).convert("L"), np.float32) / 255.0
                total += 1
                for geometry in (False, True):
                    margin = polarity_margin(export, geometry=geometry)
                    counts[geometry][0] += margin > PIXEL_POLARITY_MARGIN  # a normal export read as inverted
                    counts[geometry][1] += -margin <= PIXEL_POLARITY_MARGIN  # its inverse left as stored
                    if margin > PIXEL_POLARITY_MARGIN:
                        worst[geometry].append(case.name)
        for geometry in (False, True):
            label = "after (shape weight)" if geometry else "before (no shape weight)"
            kinds = {k: sum(f"_{k}" in n for n in worst[geometry]) for k in ("plain", "dim", "bright", "fill95")}
            print(f"{name} full-frame, {total} exports, {label}: read as inverted {counts[geometry][0]} {kinds}, "
                  f"inverse left as stored {counts[geometry][1]}")


def main() -> None:
    """Print the figures for mini-MIAS, CBIS-DDSM and CDD-CESM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cesm-step", type=int, default=1, help="use every n-th CDD-CESM image")
    parser.add_argument("--full-frame", type=int, default=0, metavar="STEP",
                        help="also judge the full-frame exports of every STEP-th image (0: skip)")
    args = parser.parse_args()
    root = default_data_root()
    sets = {
        "mini-MIAS": sorted((root / "mias" / "images").glob("mdb*.png")),
        "CBIS-DDSM": sorted((root / "cbis_ddsm" / "dicom").glob("*.dcm")),
        "CDD-CESM": sorted((root / "cdd_cesm" / "images").glob("*.png"))[:: args.cesm_step],
    }
    print(f"thresholds: pixels invert past {PIXEL_POLARITY_MARGIN}, overrule a DICOM tag past {TAG_OVERRULE_MARGIN}")
    for name, paths in sets.items():
        if not paths:
            print(f"{name}: no images under {root}")
            continue
        margins, seconds = [], 0.0
        for path in paths:
            image, _ = read_image(Path(path), polarity=False)
            for candidate, inverted in ((image, False), (1.0 - image, True)):
                start = time.perf_counter()
                margin = polarity_margin(candidate)
                seconds += time.perf_counter() - start
                margins.append(margin if inverted else -margin)  # > 0: judged right
        margins = np.asarray(margins)
        wrong = int((margins <= 0).sum())
        below = int((margins <= PIXEL_POLARITY_MARGIN).sum())
        print(f"{name}: {len(paths)} images x 2: wrong {wrong}, at or below the pixel margin {below}, "
              f"smallest margin {margins.min():.3f}, 5th percentile {np.percentile(margins, 5):.3f}, "
              f"{1000 * seconds / len(margins):.2f} ms per decision")
    if args.full_frame:
        full_frame(root, args.full_frame)


if __name__ == "__main__":
    main()
