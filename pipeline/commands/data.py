"""`mammoscope data scan [PATH]`: read a whole dataset, report unreadable files, print its summary.
`mammoscope data fetch mias`: download, verify and install mini-MIAS into the data root (docs/data.md)."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "inspect and fetch datasets: `mammoscope data scan [PATH]`, `mammoscope data fetch mias`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `data` sub-commands (scan, fetch)."""
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
    fetch = sub.add_parser("fetch", help="download, verify and install a public dataset (mini-MIAS)")
    fetch.add_argument("dataset", choices=("mias",), help="mias: mini-MIAS from its owners (research use only)")
    fetch.add_argument("--root", type=Path, default=None,
                       help="data root to install into as <root>/mias (default: $MAMMOSCOPE_DATA, else "
                       "../shared/data when it holds mini-MIAS, else the user data folder)")
    fetch.add_argument("--url", default=None, help="archive URL (default: $MAMMOSCOPE_MIAS_URL, else the official one)")
    fetch.add_argument("--verify", action="store_true",
                       help="also verify an installed copy against the shipped digests (every image's pixels)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run the data action."""
    return fetch(args) if args.data_command == "fetch" else scan(args)


def fetch(args: argparse.Namespace) -> int:
    """Install mini-MIAS unless the data root holds it; exit 3 when the download fails, 4 when it does not verify."""
    from pipeline.errors import DataIntegrityError
    from pipeline.io.datasets.mias import find_info_file
    from pipeline.io.datasets.mias_fetch import problem_summary, fetch_mias, verify_mias
    from pipeline.paths import default_data_root

    root = args.root or default_data_root()
    existed = find_info_file(root / "mias") is not None
    target = fetch_mias(root, url=args.url, progress=not args.no_progress, say=lambda s: print(s, flush=True))
    if existed:
        print(f"mini-MIAS is already installed in {target}")
        if args.verify:
            problems = verify_mias(target, progress=not args.no_progress)
            if problems:
                raise DataIntegrityError(f"{target}: {len(problems)} problem(s) against the shipped digests: "
                                         f"{problem_summary(problems)}")
            print("every image and the labels match the shipped digests")
    return 0


def scan(args: argparse.Namespace) -> int:
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
