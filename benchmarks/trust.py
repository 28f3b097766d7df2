"""Benchmark of the trust features in patient-level CV: conformal coverage and density-aware operating points.

For mini-MIAS tissue (density F/G/D), mini-MIAS lesions (benign vs malignant, ROI crops) and CDD-CESM benign vs
malignant (manifest adapter, whole images), prints the empirical coverage of the prediction sets overall and per class
beside the binomial 95% interval of the nominal level for that many rows, the mean set size, and (malignancy with
density labels) the dense group's sensitivity and specificity at the per-group thresholds vs the single threshold,
with CIs, in the same folds. Bounded: frozen features (handcrafted by default; `--cnn` adds the frozen ImageNet
EfficientNet-Lite0 embedding), cached per image under the project cache.

Run: .venv/bin/python benchmarks/trust.py [--coverage 0.9] [--cnn] [--only mias_density,mias_lesions,cdd_cesm]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config.experiment import load_experiment  # noqa: E402
from pipeline.paths import default_cache_dir  # noqa: E402
from pipeline.training.train import evaluate_experiment, load_task_data  # noqa: E402

CDD = ROOT.parent / "shared" / "data" / "cdd_cesm"
CASES = {
    "mias_density": ("experiments/mias_density_handcrafted.yaml", []),
    "mias_lesions": ("experiments/mias_malignancy_handcrafted.yaml", []),
    "cdd_cesm": ("experiments/mias_malignancy_handcrafted.yaml",
                 ["dataset.adapter=manifest", "dataset.require_roi=false", "dataset.classes=[benign,malignant]"]),
}


def benign_malignant_manifest(folder: Path) -> Path:
    """CDD-CESM's manifest without its `normal` rows (the manifest adapter reads benign/malignant only), with
    absolute file paths, written to `folder` (images stay where they are)."""
    import pandas as pd

    table = pd.read_csv(CDD / "manifest.csv")
    table = table[table["pathology"].isin(["benign", "malignant"])].copy()
    table["file"] = [str(CDD / f) for f in table["file"]]
    out = folder / "cdd_cesm_benign_malignant.csv"
    table.to_csv(out, index=False)
    return out


def _ci(m: dict, key: str) -> str:
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    return f"{m[key]:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{m[key]:.3f}"


def report(name: str, m: dict, classes: list[str], seconds: float) -> None:
    """Print one case's coverage and operating-point lines."""
    print(f"\n== {name} ({int(m['conformal_n'])} samples, {seconds:.0f} s) ==")
    print(f"nominal coverage {m['conformal_level']:.2f}; mean set size {m['conformal_mean_set_size']:.2f}; "
          f"singletons {m['conformal_singleton_share']:.0%}, empty {m['conformal_empty_share']:.0%}")
    for key, label in [("", "overall")] + [(f"_{c}", c) for c in classes]:
        cov, lo, hi = (m[f"conformal_coverage{key}{s}"] for s in ("", "_nominal_low", "_nominal_high"))
        inside = "inside" if lo <= cov <= hi else "OUTSIDE"
        print(f"  coverage {label:>10}: {cov:.3f}  (n={int(m[f'conformal_n{key}'])}, binomial 95% of nominal "
              f"[{lo:.3f}, {hi:.3f}]: {inside})")
    if "dense_groupthr_sens" in m:
        print(f"  threshold rule      pooled sens        pooled spec        dense sens         dense spec"
              f"         (dense: {int(m['dense_groupthr_n'])} findings, {int(m['dense_groupthr_n_positive'])} "
              f"malignant; own dense threshold in {int(m['groupthr_dense_own_folds'])} folds)")
        for rule in ("singlethr", "groupthr"):
            print(f"  {rule:<18}" + "".join(f" {_ci(m, f'{g}_{rule}_{s}'):<19}" for g in ("cv", "dense")
                                              for s in ("sens", "spec")))
        cost = m["dense_singlethr_spec"] - m["dense_groupthr_spec"]
        print(f"  dense sensitivity {m['dense_singlethr_sens']:.3f} -> {m['dense_groupthr_sens']:.3f} at a dense "
              f"specificity cost of {cost:+.3f}")
    elif name != "mias_density":
        print("  no density labels: per-group thresholds not applicable")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coverage", type=float, default=0.90)
    parser.add_argument("--cnn", action="store_true", help="add the frozen CNN embedding (slower)")
    parser.add_argument("--only", default=",".join(CASES))
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    for name in args.only.split(","):
        path, extra = CASES[name]
        if name == "cdd_cesm":
            import tempfile

            extra = [*extra, f"dataset.path={benign_malignant_manifest(Path(tempfile.mkdtemp()))}"]
        exp = load_experiment(ROOT / path, [*extra, f"evaluation.conformal.coverage={args.coverage}",
                                            f"features.cnn.enabled={str(args.cnn).lower()}",
                                            f"samples.size={args.size}", f"evaluation.folds={args.folds}",
                                            "samples.n_jobs=2", "compute.n_jobs=2"])
        t0 = time.perf_counter()
        data = load_task_data(exp.config, lambda s: print("  " + s, flush=True))
        metrics, _, _ = evaluate_experiment(exp.config, data, default_cache_dir(),
                                            progress=lambda s: print("  " + s, flush=True))
        report(name, metrics, data.classes, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
