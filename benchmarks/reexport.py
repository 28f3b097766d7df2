"""Benchmark: does a shipped model keep its figures when the images come as 640 px JPEG re-exports?

The external screening set the maintainers score holds 640 px JPEG re-exports (tens of pixels per centimetre, 8 bit,
lossy), while every development image is a full-resolution PNG or DICOM. This measures that shift on data we have:
each task's images are re-exported as such files (pipeline.io.reexport: long side 640 px, 8 bit, JPEG quality
90; written to disk and read back by `read_image`, as scoring reads them), and in each outer fold of quality.py's
patient-level folds the shipped recipe is fitted on the original training images only and scores the SAME test
images twice: as originals and as re-exports. The difference (re-export - original) is paired, with a patient-level
bootstrap CI (1,000 resamples). A large loss here predicts a loss on any archive exported that way; a method meant
to close it is judged on the same folds.

    .venv/bin/python benchmarks/reexport.py --tasks tissue screening_mias [screening_cdd] [--quality 90]
      [--train-on original|reexport|both|augment|nested|nested-augment] [--pair-with ...] [--set KEY=VALUE ...]

`--train-on reexport` fits on the re-exported training images instead (the model and the test images match), and
`both` on the originals and their re-exports together (a copy keeps its patient's id, so no patient crosses a fold,
and forms an exam of its own, so the exam stage never reads it as another view): training-time export augmentation.
Both use the training path's own copies code (pipeline.training.copies, which `samples.export_copies` switches on
in a training, making the same pixels in memory). `augment` is `both` with the copies as rows that only train: they
fit the models but are never held out, so the calibration, the exam stage and every operating point come from
original images alone (a copy's scores differ from an original's, and a threshold set on a mix of the two does not
hold on originals). `nested` (`nested-augment`;
screening entries) lets each outer training fold pick original or both (augment) on its own inner patient-level
folds. Each run's out-of-fold results are kept under <cache>/reexport-q<quality>/; `--pair-with` pairs this training
with another one run before, on each test set. Screening entries print the image AUC with the exam's views and of
each image alone (first stage), and the specificity at the fold's in-fold 95%-sensitivity threshold; density
entries the quadratic-weighted kappa per image and per exam and the recall of the extreme classes. The re-exports are
written once under <cache>/reexport-q<quality>/<data folder>/ and reused; their features are cached like any
sample's. (This project's CDD-CESM copies are already 512 px, so there a re-export adds only JPEG loss.)
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the repo's packages; benchmarks/ itself stays off sys.path (its features.py would
sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]  # shadow the features package)


def _quality_module() -> Any:
    """benchmarks/quality.py as a module (the one already loaded, e.g. by the tests, else loaded from its file)."""
    import importlib.util

    for name in ("bench_quality", "quality"):
        mod = sys.modules.get(name)
        if mod is not None and Path(getattr(mod, "__file__", "")).resolve() == ROOT / "benchmarks" / "quality.py":
            return mod
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "benchmarks" / "quality.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = mod  # before exec: its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


Q = _quality_module()

def reexport_file(src: Path, dst: Path, quality: int) -> None:
    """Write `src` (any format read_image reads) as a 640 px, 8-bit JPEG at `dst` (kept if already there)."""
    from pipeline.io.imageio import read_image
    from pipeline.io.reexport import jpeg_export

    if dst.is_file() and dst.stat().st_size > 0:
        return
    image, _ = read_image(src)
    data, _ = jpeg_export(np.asarray(image, np.float32), 640, quality)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(dst)


def reexport_dataset(config: dict[str, Any], table: pd.DataFrame, out: Path, quality: int,
                     progress: Callable[[str], None]) -> dict[str, Any]:
    """Re-export every image of the task's table under `out`; returns the dataset overrides that read them."""
    ds = config["dataset"]
    t0 = time.perf_counter()
    if ds["adapter"] == "mias":
        from pipeline.io.datasets.mias import find_info_file
        from pipeline.paths import default_mias_dir

        info = find_info_file(Path(ds["path"]) if ds["path"] else default_mias_dir())
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "Info.txt").write_bytes(info.read_bytes())
        for path in table["path"].unique():
            reexport_file(Path(path), out / "images" / (Path(path).stem + ".jpg"), quality)
        over = {"dataset": {"path": str(out)}}
    elif ds["adapter"] == "manifest":
        src = Path(ds["path"])
        if not src.is_absolute() and not src.exists():
            src = ROOT / src
        manifest = pd.read_csv(src, dtype=str, keep_default_na=False)
        used = {Path(x).resolve() for x in table["path"].unique()}
        paths = [Path(f) if Path(f).is_absolute() else (src.parent / f) for f in manifest["file"]]
        keep = [p.resolve() in used for p in paths]
        manifest = manifest[keep].copy()
        files = []
        for p in (q for q, k in zip(paths, keep) if k):
            dst = out / "images" / (p.stem + ".jpg")
            reexport_file(p, dst, quality)
            files.append(str(dst.resolve()))
        manifest["file"] = files
        out.mkdir(parents=True, exist_ok=True)
        manifest.to_csv(out / "manifest.csv", index=False)
        over = {"dataset": {"path": str(out / "manifest.csv")}}
    else:
        raise SystemExit(f"reexport: adapter {ds['adapter']!r} not supported (mias, manifest)")
    progress(f"  re-exported {table['path'].nunique()} images to {out} ({time.perf_counter() - t0:.0f} s)")
    return over


def _aligned(data: Any, other: Any, what: str) -> np.ndarray:
    """Row positions in `other` of each row of `data` (by sample_id); every row must be there."""
    pos = pd.Series(np.arange(len(other.table)), index=other.table["sample_id"].astype(str).to_numpy())
    ids = data.table["sample_id"].astype(str)
    missing = ids[~ids.isin(pos.index)]
    if len(missing):
        raise SystemExit(f"{what}: {len(missing)} images gave no re-exported sample (e.g. {missing.iloc[0]}); "
                         "a re-export that is refused is a finding of its own: see benchmarks/breast_mask.py")
    return pos.reindex(ids.to_numpy()).to_numpy()


def _training_rows(X: np.ndarray, Xr: np.ndarray, y: np.ndarray, groups: np.ndarray, tr: np.ndarray,
                   train_on: str, table: pd.DataFrame | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame | None, np.ndarray | None]:
    """(X, y, groups, exam table rows, augmented) of a fold's training rows: originals, re-exports, or both (the
    training path's export copies, pipeline.training.copies: a copy keeps its patient's id, an exam of its own);
    "augment" marks the copies as rows that only train, "both" holds them out like originals (augmented None)."""
    from pipeline.training.copies import ExportCopies, training_rows

    ex = None if table is None else table.iloc[tr].reset_index(drop=True)
    if train_on == "original":
        return X[tr], y[tr], groups[tr], ex, None
    if train_on == "reexport":
        return Xr[tr], y[tr], groups[tr], ex, None
    if train_on not in ("both", "augment"):
        raise ValueError(f"train_on must be original, reexport, both or augment. Got {train_on!r} instead.")
    copies = ExportCopies(X=Xr, origin=np.arange(len(y)))  # every row's re-export (files made beforehand)
    Xt, yt, gt, ex, augmented = training_rows(X, y, groups, table, tr, copies)
    return Xt, yt, gt, ex, augmented if train_on == "augment" else None


def density_folds(cfg: dict[str, Any], data: Any, Xr: np.ndarray, folds: list, cache: Path, train_on: str,
                  progress: Callable[[str], None]) -> dict[str, dict[str, np.ndarray]]:
    """Per test arm ("original", "reexport"): out-of-fold calls per image and per exam of the shipped density model."""
    from sklearn.base import clone

    from pipeline.evaluation.metrics import exam_average
    from pipeline.io.exams import exam_ids
    from pipeline.model.estimators import build_pipeline, final_classifier
    from pipeline.model.routing import fit_with_groups

    pipe = build_pipeline(cfg, cache)
    exams = exam_ids(data.table)
    n = len(data.y)
    out = {a: {"call": np.zeros(n, int), "exam_call": np.zeros(n, int)} for a in ("original", "reexport")}
    t0 = time.perf_counter()
    for i, (tr, te) in enumerate(folds):
        Xt, yt, gt, _, aug = _training_rows(data.X, Xr, data.y, data.groups, tr, train_on)
        est = fit_with_groups(clone(pipe), Xt, yt, gt, aug)
        clf = final_classifier(est)
        for arm, X in (("original", data.X), ("reexport", Xr)):
            p = est.predict_proba(X[te])
            out[arm]["call"][te] = clf.decide(p)
            out[arm]["exam_call"][te] = clf.decide(exam_average(p, exams[te]))
        progress(f"  fold {i + 1}/{len(folds)} done ({time.perf_counter() - t0:.0f} s)")
    return out


def _fit_exam(cfg: dict[str, Any], pipe: Any, data: Any, Xr: np.ndarray, table: pd.DataFrame, tr: np.ndarray,
              train_on: str) -> Any:
    """The shipped screening ExamModel fitted on the rows `tr` as originals, re-exports, both, or both with the
    copies as rows that only train ("augment")."""
    from sklearn.base import clone

    from pipeline.model.screening import build_exam_model

    Xt, yt, gt, exams, aug = _training_rows(data.X, Xr, data.y, data.groups, tr, train_on, table)
    est = build_exam_model(cfg, clone(pipe), with_map=False)
    return est.fit(Xt, yt, groups=gt, exams=exams, augmented=aug)


def choose_training(cfg: dict[str, Any], pipe: Any, data: Any, Xr: np.ndarray, table: pd.DataFrame, tr: np.ndarray,
                    inner_folds: int = 3, candidate: str = "both") -> tuple[str, dict[str, float]]:
    """The training ("original" or `candidate`: "both" or "augment") whose exam model ranks the training fold's own
    held-out originals better: image ROC AUC of patient-grouped inner out-of-fold scores (ties keep "original"),
    and both AUCs."""
    from sklearn.metrics import roc_auc_score

    from pipeline.evaluation.splits import patient_stratified_folds

    inner = patient_stratified_folds(data.y[tr], data.groups[tr], inner_folds, int(cfg["evaluation"]["seed"]))
    auc: dict[str, float] = {}
    for cand in ("original", candidate):
        p = np.full(len(tr), np.nan)
        for itr, ite in inner:
            est = _fit_exam(cfg, pipe, data, Xr, table, tr[itr], cand)
            p[ite] = est.predict_levels(data.X[tr[ite]], exams=table.iloc[tr[ite]].reset_index(drop=True)
                                        ).images["p"].to_numpy()
        auc[cand] = float(roc_auc_score(data.y[tr], p))
    return (candidate if auc[candidate] > auc["original"] else "original"), auc


def screening_folds(cfg: dict[str, Any], data: Any, Xr: np.ndarray, folds: list, cache: Path, train_on: str,
                    progress: Callable[[str], None]) -> dict[str, dict[str, np.ndarray]]:
    """Per test arm: out-of-fold image probabilities (first stage, and with the exam stage) and calls at the fold's
    image threshold of the shipped screening exam model. train_on="nested" ("nested-augment"): each outer training
    fold picks "original" or "both" ("augment") by choose_training on its own inner folds."""
    from pipeline.io.exams import exam_ids
    from pipeline.model.screening import build_screening_pipeline

    pipe = build_screening_pipeline(cfg, cache)
    table = data.table.reset_index(drop=True).copy()
    table["exam_id"] = exam_ids(table)
    n = len(data.y)
    out = {a: {"p": np.full(n, np.nan), "p_single": np.full(n, np.nan), "call": np.zeros(n, int)}
           for a in ("original", "reexport")}
    t0 = time.perf_counter()
    for i, (tr, te) in enumerate(folds):
        how = train_on
        if train_on.startswith("nested"):
            cand = "augment" if train_on == "nested-augment" else "both"
            how, auc = choose_training(cfg, pipe, data, Xr, table, tr, candidate=cand)
            progress(f"  fold {i + 1}: inner AUC original {auc['original']:.3f}, {cand} {auc[cand]:.3f}: {how}")
        est = _fit_exam(cfg, pipe, data, Xr, table, tr, how)
        for arm, X in (("original", data.X), ("reexport", Xr)):
            lv = est.predict_levels(X[te], exams=table.iloc[te].reset_index(drop=True))
            out[arm]["p"][te] = lv.images["p"].to_numpy()
            out[arm]["p_single"][te] = lv.images["p_single"].to_numpy()
            out[arm]["call"][te] = (lv.images["p"].to_numpy() >= est.thresholds_["image"]).astype(int)
        progress(f"  fold {i + 1}/{len(folds)} done ({time.perf_counter() - t0:.0f} s)")
    return out


def _spec(d: Any, rows: np.ndarray) -> float:
    sel = d["y"][rows] == 0
    return float(np.mean(d["call"][rows][sel] == 0)) if sel.any() else np.nan


def _sens(d: Any, rows: np.ndarray) -> float:
    sel = d["y"][rows] == 1
    return float(np.mean(d["call"][rows][sel] == 1)) if sel.any() else np.nan


def report(bt: Any, data: Any, arms: dict[str, dict[str, np.ndarray]], pairs: list[tuple[str, str]],
           n_resamples: int) -> list[dict[str, Any]]:
    """Rows: each metric per arm (a training and a test set: out-of-fold results on the same images) and each pair's
    paired difference "a - b" on the same whole-patient resamples. Arm names must not hold "-"."""
    from pipeline.io.exams import exam_ids

    y, k = data.y, len(data.classes)
    res = Q.patient_resamples(data.groups, n_resamples, seed=0)
    rows: list[dict[str, Any]] = []

    def add(metric: str, stat: Callable, field: str, resamples: list = res, sel: np.ndarray | None = None,
            score: str = "p") -> None:
        sel = np.arange(len(y)) if sel is None else sel
        d: dict[str, Any] = {a: {"y": y[sel], "p": o.get(score, o[field])[sel], "call": o[field][sel], "k": k}
                             for a, o in arms.items()}
        d.update({f"{a}-{b}": None for a, b in pairs})
        ci = Q.paired_ci(stat, d, resamples)
        row = {"task": bt.key, "metric": metric, **{a: Q._fmt(ci[a]) for a in arms}}
        row.update({f"{a} - {b} (paired)": Q._fmt(ci[f"{a}-{b}"], signed=True) for a, b in pairs})
        rows.append(row)

    if bt.levels:
        add("image ROC AUC (exam model)", Q._auc, "call")
        add("image ROC AUC (first stage alone)", Q._auc, "call", score="p_single")
        add("spec at the in-fold 95%-sens threshold", _spec, "call")
        add("sens at that threshold", _sens, "call")
    else:
        add("kappa_w per image", Q._kappa, "call")
        for j in (0, k - 1):
            add(f"recall {data.classes[j]} per image", Q._rate(j), "call")
        exams = exam_ids(data.table)
        first = ~pd.DataFrame({"exam": exams, "y": y}).duplicated().to_numpy()
        eres = Q.patient_resamples(data.groups[first], n_resamples, seed=0)
        add(f"kappa_w per exam (n={int(first.sum())})", Q._kappa, "exam_call", eres, first)
    return rows


def _result_file(cache: Path, quality: int, key: str, train_on: str, sets: list[str]) -> Path:
    tag = "" if not sets else "-" + hashlib.sha1("\n".join(sets).encode()).hexdigest()[:10]
    return cache / f"reexport-q{quality}" / f"{key}-trained-on-{train_on}{tag}.npz"


def _save(path: Path, out: dict[str, dict[str, np.ndarray]]) -> None:
    np.savez(path, **{f"{arm}__{f}": v for arm, o in out.items() for f, v in o.items()})


def _load(path: Path) -> dict[str, dict[str, np.ndarray]]:
    z = np.load(path)
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in z.files:
        arm, f = name.split("__", 1)
        out.setdefault(arm, {})[f] = z[name]
    return out


def run_task(key: str, quality: int, train_on: str, sets: list[str], cache: Path, n_resamples: int,
             progress: Callable[[str], None], pair_with: str | None = None, reuse: bool = False
             ) -> list[dict[str, Any]]:
    """Fit on one set of the task's training images per outer fold; score its test images original and re-exported.
    Each run's out-of-fold results are kept under <cache>/reexport-q<quality>/; `pair_with` (another `train_on`
    run already made with the same settings) adds rows pairing the two trainings on each test set; `reuse` reads
    this training's kept results instead of fitting again, where they are there."""
    from pipeline.config.experiment import parse_overrides, resolve_config
    from pipeline.evaluation.splits import patient_stratified_folds
    from pipeline.training.train import load_task_data

    bt = next(t for t in Q.TASKS if t.key == key)
    if not (Q.DATA / bt.needs).is_dir():
        progress(f"{key}: {Q.DATA / bt.needs} is absent; skipped")
        return []
    with tempfile.TemporaryDirectory(prefix="mammoscope-reexport-") as tmp:
        base = Q._merge(bt.overrides, bt.prepare(Path(tmp)) if bt.prepare else {})
        if bt.levels:
            cfg = resolve_config(Q.EXPERIMENTS / bt.experiment, Q._merge(base, Q.FOLDS, parse_overrides(sets)))
        else:
            cfg = Q.arm_configs(bt, base, Q.FOLDS, sets, False, False, None)["shipped"]
        t0 = time.perf_counter()
        data = load_task_data(cfg, progress=lambda s: None)
        if bt.prevalence:
            data = Q._prevalence_subsample(data, bt.prevalence, seed=0)
        folder = cache / f"reexport-q{quality}" / bt.needs
        over = reexport_dataset(cfg, data.table, folder, quality, progress)
        cfg_r = Q._merge(cfg, over)
        data_r = load_task_data(cfg_r, progress=lambda s: None)
        Xr = data_r.X[_aligned(data, data_r, key)]
        ev = cfg["evaluation"]
        folds = patient_stratified_folds(data.y, data.groups, ev["folds"], ev["seed"])
        progress(f"{key}: {len(data.y)} images of {len(set(data.groups))} patients, samples {data.X.shape[1:]} "
                 f"({time.perf_counter() - t0:.0f} s to load both); training on {train_on}")
        if train_on.startswith("nested") and not bt.levels:
            raise SystemExit(f"{key}: --train-on nested is for screening entries")
        kept = _result_file(cache, quality, key, train_on, sets)
        if reuse and kept.is_file():
            progress(f"  reusing {kept}")
            out = _load(kept)
        else:
            run = screening_folds if bt.levels else density_folds
            out = run(cfg, data, Xr, folds, cache, train_on, progress)
    _save(kept, out)
    rows = report(bt, data, {"original": out["original"], "re_export": out["reexport"]},
                  [("re_export", "original")], n_resamples)
    if pair_with and pair_with != train_on:
        other = _result_file(cache, quality, key, pair_with, sets)
        if not other.is_file():
            raise SystemExit(f"--pair-with {pair_with}: {other} is not there; run --train-on {pair_with} first")
        before = _load(other)
        for test in ("original", "reexport"):
            a, b = (f"trained_{t.replace('-', '_')}" for t in (train_on, pair_with))  # report: no "-" in names
            for row in report(bt, data, {a: out[test], b: before[test]}, [(a, b)], n_resamples):
                rows.append({**row, "metric": f"{row['metric']}, tested on {test}"})
    return rows


def main(argv: list[str] | None = None) -> int:
    from pipeline.paths import default_cache_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", nargs="+", default=["tissue", "screening_mias"],
                    choices=[t.key for t in Q.TASKS])
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-exports (default 90)")
    modes = ("original", "reexport", "both", "augment", "nested", "nested-augment")
    ap.add_argument("--train-on", choices=modes, default="original",
                    help="augment: both, the copies only training (never calibrating or setting a threshold); "
                         "nested / nested-augment (screening entries): each outer training fold picks original or "
                         "both / augment by its own inner patient-level CV (image AUC of the exam model on its "
                         "held-out originals)")
    ap.add_argument("--pair-with", choices=modes, default=None,
                    help="also pair this training with another --train-on run kept from before (same --quality, "
                         "--set), on each test set")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override the shipped recipe")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--reuse", action="store_true", help="read this training's kept out-of-fold results (same "
                    "--quality, --set) instead of fitting again, where they are there")
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    if any("samples.export_copies" in item for item in args.set):
        raise SystemExit("--set samples.export_copies: this benchmark makes the copies itself (--train-on augment); "
                         "a copy setting would also copy the re-exports")
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    cache = args.cache_dir or default_cache_dir()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for key in args.tasks:
        rows += run_task(key, args.quality, args.train_on, args.set, cache, args.resamples, print, args.pair_with,
                         args.reuse)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 12, "display.max_colwidth", 60):
        print(f"\nre-exports: long side 640 px, 8 bit, JPEG quality {args.quality}; trained on {args.train_on}; "
              f"{time.perf_counter() - t0:.0f} s")
        paired = table["metric"].str.contains(", tested on ", regex=False) if len(table) else []
        for part in (table[~paired], table[paired]) if len(table) else ():  # each table with its own columns
            if len(part):
                print(part.dropna(axis=1, how="all").to_string(index=False) + "\n")
        if not len(table):
            print("(no task ran)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
