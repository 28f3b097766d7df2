"""Polarity from the pixels on every real image here, stored and inverted: errors, the smallest margin, the time.

Run: ``python benchmarks/polarity.py [--cesm-step 1]``. Prints, per data set, how many of the images and of their
inverses are judged wrong, the smallest |margin| (features.polarity.polarity_margin; read_image inverts a non-DICOM
image past pipeline.io.imageio.PIXEL_POLARITY_MARGIN and overrules a DICOM tag past TAG_OVERRULE_MARGIN) and the time per
decision (the image is already in memory; the decision downsamples it first).
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


def main() -> None:
    """Print the figures for mini-MIAS, CBIS-DDSM and CDD-CESM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cesm-step", type=int, default=1, help="use every n-th CDD-CESM image")
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


if __name__ == "__main__":
    main()
