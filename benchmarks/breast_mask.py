"""Full-frame screening exports built from real images: how many are refused, how much of the breast the mask keeps.

Run: ``python benchmarks/breast_mask.py [--step 8] [--time-only]``. First the mask's speed: `breast_mask` +
`orient_chest_wall_left` per call on a real mini-MIAS film resized to 224 and 1024 px (budgets 10 and 50 ms; timed
here, not in a unit test, since a shared CI machine makes such a test flaky). Then every `step`-th mini-MIAS and
CDD-CESM image and every CBIS-DDSM DICOM becomes 48 640 px JPEG exports (tests/_full_frame.breast_cases: breast
filling 80 or 95 % of the frame, mirrored or not, a saturated corner marker or not, a detector seam or not, plain / dim / bright), each read and
masked as scoring does (read_image, check_not_blank, pipeline.samples.find_breast). Prints, per data set and per
variant, the refusals, wrongly inverted reads, the median and worst share of the reference breast the mask keeps,
then the refusal cases (tests/_full_frame.refusal_cases), each of which must be refused.
"""
from __future__ import annotations

import argparse
import logging
import warnings
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo's features/, not a benchmarks module
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from pipeline.errors import NoBreastError  # noqa: E402
from pipeline.io.imageio import read_image  # noqa: E402
from pipeline.paths import default_data_root  # noqa: E402
from pipeline.samples import check_not_blank, find_breast  # noqa: E402
from tests._full_frame import breast_cases, refusal_cases  # noqa: E402


def score_case(path: Path, truth: np.ndarray | None) -> dict:
    """Read and mask one export as scoring does: {'refused': message or None, 'inverted', 'kept', 'extra'}."""
    image, meta = read_image(path)
    out = {"refused": None, "inverted": bool(meta.inverted), "kept": np.nan, "extra": np.nan}
    try:
        check_not_blank(image, path)
        _, flipped, mask = find_breast(image, None, path)
    except NoBreastError as exc:
        out["refused"] = str(exc)
        return out
    if truth is not None:
        mask = mask[:, ::-1] if flipped else mask
        out["kept"] = float(mask[truth].mean())
        out["extra"] = float((mask & ~truth).mean())
    return out


def _kept(results: list[dict]) -> str:
    """'median M, worst W' of the breast share kept by the masks of the exports that were not refused."""
    kept = np.array([r["kept"] for r in results if not r["refused"]], dtype=float)
    kept = kept[np.isfinite(kept)]
    if kept.size == 0:
        return "no mask"
    return f"median {np.median(kept):.3f}, worst {kept.min():.3f}, below 0.9: {int((kept < 0.9).sum())}"


BUDGET_MS = {224: 10.0, 1024: 50.0}  # per call of breast_mask + orient_chest_wall_left on a 2-core laptop CPU


REPEATS = 20


def time_mask(image: np.ndarray, repeats: int = REPEATS) -> dict[int, float]:
    """Median ms per call of breast_mask + orient_chest_wall_left on `image` resized to each BUDGET_MS size."""
    from skimage.transform import resize

    from features.breast import breast_mask, orient_chest_wall_left

    out = {}
    for size in BUDGET_MS:
        small = resize(image, (size, size), anti_aliasing=True, preserve_range=True).astype(np.float32)
        breast_mask(small)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            breast_mask(small)
            orient_chest_wall_left(small)
            times.append(time.perf_counter() - start)
        out[size] = 1000 * float(np.median(times))
    return out


def main() -> None:
    """Print refusals and mask coverage of the generated full-frame exports, then the refusal cases."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--step", type=int, default=8, help="use every n-th mini-MIAS and CDD-CESM image")
    parser.add_argument("--csv", type=Path, help="also write one row per export (name, refused, inverted, kept, extra)")
    parser.add_argument("--time-only", action="store_true", help="only the mask's speed")
    args = parser.parse_args()
    logging.getLogger("pipeline").setLevel(logging.ERROR)  # the inversion warnings are counted, not printed
    warnings.simplefilter("ignore", UserWarning)
    root = default_data_root()
    sets = {
        "mini-MIAS": sorted((root / "mias" / "images").glob("mdb*.png"))[:: args.step],
        "CDD-CESM": sorted((root / "cdd_cesm" / "images").glob("*.png"))[:: args.step * 3],
        "CBIS-DDSM": sorted((root / "cbis_ddsm" / "dicom").glob("*.dcm")),
    }
    film, _ = read_image(sets["mini-MIAS"][0])
    for size, ms in time_mask(film).items():
        verdict = "met" if ms <= BUDGET_MS[size] else "NOT met"
        print(f"mask + orientation at {size} px ({sets['mini-MIAS'][0].name}): {ms:.1f} ms per call, median of "
              f"{REPEATS} (budget {BUDGET_MS[size]:.0f} ms: {verdict})")
    if args.time_only:
        return
    start = time.perf_counter()
    by_variant: dict[str, list[dict]] = defaultdict(list)
    first_image, rows = None, []
    with tempfile.TemporaryDirectory() as tmp:
        for set_name, paths in sets.items():
            results = []
            for path in paths:
                image, _ = read_image(path)
                first_image = image if first_image is None else first_image
                try:
                    cases = breast_cases(image, Path(path).stem)
                except ValueError as exc:  # a breast too thin or ragged for a 95 % crop
                    print(f"    {Path(path).name} left out: {exc}")
                    continue
                for case in cases:
                    result = score_case(case.write(Path(tmp)), case.truth)
                    result["name"] = case.name
                    rows.append({"set": set_name, **result})
                    results.append(result)
                    for part in ("mirror", "marker", "seam", "dim", "bright", "fill80", "fill95"):
                        if f"_{part}" in case.name:
                            by_variant[part].append(result)
            refused = [r for r in results if r["refused"]]
            print(f"{set_name}: {len(paths)} images, {len(results)} exports: refused {len(refused)}, "
                  f"read as inverted {sum(r['inverted'] for r in results)}, breast kept {_kept(results)}")
            for r in refused[:4]:
                inv = " (read as inverted)" if r["inverted"] else ""
                print(f"    refused {r['name']}{inv}: {r['refused'].split(': ', 1)[-1][:70]}")
        for part, results in by_variant.items():
            print(f"  with {part}: {len(results)} exports, refused {sum(bool(r['refused']) for r in results)}, "
                  f"inverted {sum(r['inverted'] for r in results)}, kept {_kept(results)}")
        print("must be refused:")
        for case in refusal_cases(first_image):
            result = score_case(case.write(Path(tmp)), None)
            verdict = "refused" if result["refused"] else "ACCEPTED"
            print(f"  {case.name}: {verdict} {(result['refused'] or '').split(': ', 1)[-1][:80]}")
    if args.csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.csv, index=False)
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
