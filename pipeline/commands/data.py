"""`mammoscope data scan [PATH]`: read a whole dataset, report unreadable files, print its summary."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "inspect datasets: `mammoscope data scan [PATH]`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `data` sub-commands (scan)."""
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    scan = sub.add_parser("scan", help="read every image of a dataset and print a summary")
    scan.add_argument(
        "path", nargs="?", default=None,
        help="dataset folder or manifest CSV (default: the embedded mini-MIAS, $MAMMOSCOPE_DATA/mias)",
    )
    scan.add_argument(
        "--adapter", choices=("mias", "cbis", "manifest", "folder"), default=None,
        help="dataset layout (default: detected: Info.txt -> mias, case-description CSVs -> cbis, "
        "a CSV -> manifest, else a plain folder of images)",
    )
    scan.add_argument("--errors", type=Path, default=None, metavar="CSV", help="write unreadable files to this CSV")
    scan.add_argument("--n-jobs", type=int, default=2, help="parallel readers (joblib; -1 = all cores; default 2)")
    scan.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Scan the dataset; exit 0 even when some files are unreadable (they are listed and a warning is printed)."""
    from pipeline.io.scan import scan_dataset, summary_lines

    start = time.perf_counter()
    result = scan_dataset(args.path, adapter=args.adapter, n_jobs=args.n_jobs, progress=not args.no_progress)
    for line in summary_lines(result):
        print(line)
    if len(result.errors):
        print(f"\nunreadable files ({len(result.errors)}):")
        width = min(60, max(len(Path(p).name) for p in result.errors["path"]))
        for path, error in zip(result.errors["path"], result.errors["error"]):
            reason = error.split(": ", 1)[1] if error.startswith(str(path)) else error
            print(f"  {Path(path).name:<{width}}  {reason}")
        if args.errors:
            args.errors.parent.mkdir(parents=True, exist_ok=True)
            result.errors.to_csv(args.errors, index=False)
            print(f"errors written to {args.errors}")
        print(f"warning: {len(result.errors)} unreadable file(s) skipped", file=sys.stderr)
    elif args.errors:
        result.errors.to_csv(args.errors, index=False)
    print(f"scanned in {time.perf_counter() - start:.1f} s")
    return 0
