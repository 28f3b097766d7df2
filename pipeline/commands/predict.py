"""`mammoscope predict`: score files, folders or a manifest CSV with registered models into a results table."""
from __future__ import annotations

import argparse
import logging
import sys

HELP = "score files, folders or a manifest with registered models"

EPILOG = """\
inputs:
  PATH may be an image file (PNG, JPEG, PGM, TIFF, DICOM), a folder (searched recursively for names matching
  --include; hidden files skipped; symlink loops visited once) or a manifest CSV with a 'path' (or 'file') column,
  relative to the manifest, and optional 'laterality' and 'view' columns.

output:
  One row per image: path, laterality, view, per task the class probabilities, the call at the model's
  operating point, model name and version, then warnings and error. The format follows the extension of --out:
  .csv, .jsonl, .json or .parquet. Rows are written and synced after every batch, so an interrupted run loses at
  most one batch; running again with the same --out skips the images already there (--resume, the default).
  A screening model (task screening) also writes <out stem>.screening.breasts.csv (views of a breast fused) and
  <out stem>.screening.exams.csv (an exam = its most suspicious breast) when a manifest names patient_id (or
  exam_id), laterality and view; --maps DIR writes a PNG heat-map overlay per image.

exit status:
  0  every image was scored
  3  some images could not be scored (their error column says why; a summary goes to stderr)
  4  nothing could run: no model (train one, or check --model/--alias), no input files, or unusable --out
  1  another Mammoscope error; 2 bad command-line usage; 130 interrupted
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `mammoscope predict`."""
    from pipeline.serving.batch import DEFAULT_BATCH_SIZE
    from pipeline.config.tasks import TASKS

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or manifest CSVs")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        metavar="URI",
        help="one model, e.g. models:/mammoscope-density/3, models:/mammoscope-density@champion or "
        "runs:/RUN_ID/model (its task is read from its model card)",
    )
    which.add_argument("--alias", default="champion", help="registry alias of each task's model (default: champion)")
    parser.add_argument(
        "--task",
        choices=(*TASKS, "both"),
        default="both",
        help="which task to score with --alias (default: both = every registered task; tasks without a model are "
        "skipped if another has one)",
    )
    parser.add_argument(
        "--include",
        action="append",
        metavar="PATTERN",
        help="file-name pattern for folders, repeatable (default: the image and DICOM extensions)",
    )
    parser.add_argument("--out", default="results.csv", help="results file: .csv, .jsonl, .json or .parquet")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", dest="overwrite", action="store_false", help="skip images already in --out (default)")
    mode.add_argument("--overwrite", dest="overwrite", action="store_true", help="discard --out and score everything")
    parser.set_defaults(overwrite=False)
    parser.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"images per model call and per durable write "
        f"(default: {DEFAULT_BATCH_SIZE})"
    )
    parser.add_argument(
        "--n-jobs", type=int, default=None, help="processes reading and preparing images (default: CPU cores, at most 4;"
        " 1 = read in the main process)"
    )
    from pipeline.commands import add_tracking_option

    add_tracking_option(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--maps", metavar="DIR", default=None,
                        help="screening model: write a PNG heat-map overlay per image into DIR")
    from pipeline.compute import add_scheduler_option

    add_scheduler_option(parser)


def run(args: argparse.Namespace) -> int:
    """Run the batch prediction; returns the documented exit status."""
    import os

    from pipeline.serving.batch import BatchOptions, run_batch

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one progress bar: ours
    if args.batch_size < 1:
        print("mammoscope predict: error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    options = BatchOptions(
        paths=list(args.paths),
        out=args.out,
        model_uri=args.model,
        alias=args.alias,
        task=args.task,
        include=tuple(args.include or ()),
        overwrite=bool(args.overwrite),
        batch_size=args.batch_size,
        n_jobs=args.n_jobs,
        tracking_uri=args.tracking_uri,
        progress=not args.no_progress,
        maps=args.maps,
    )
    from pipeline.compute import compute_backend, resolve_scheduler

    with compute_backend(resolve_scheduler(args.scheduler)):
        summary = run_batch(options)
    logging.getLogger(__name__).debug("summary: %s", summary)
    print(summary.text(), file=sys.stderr)
    return summary.exit_code
