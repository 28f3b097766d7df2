"""`mammoscope pacs score|watch`: score mammography studies in a PACS over DICOMweb and store the results back."""
from __future__ import annotations

import argparse
import datetime as dt
import re
import sys

HELP = "score MG studies in a PACS (DICOMweb) and store an SR and maps back into each study"

EPILOG = """\
what it does:
  QIDO-RS finds studies with MG images (by --study, else by --since date), WADO-RS fetches their MG instances, each
  study is scored as one exam (screening per image, breast and exam; density per exam) and STOW-RS stores, as new
  series of the same study, one Secondary Capture map per image ("not for diagnosis" burned in) and one TID 1500
  Measurement Report (Comprehensive SR). A study that already holds an SR of the same model versions is skipped.
  See docs/pacs.md.

credentials (never on the command line, never logged; sent only to --url's host):
  $MAMMOSCOPE_PACS_TOKEN (bearer), or $MAMMOSCOPE_PACS_USER and $MAMMOSCOPE_PACS_PASSWORD (basic), or
  --credentials FILE / $MAMMOSCOPE_PACS_CREDENTIALS: JSON {"username": ..., "password": ...} or {"token": ...}

exit status:
  0  every study was scored or already had its results
  3  some studies failed (listed by Study Instance UID on stderr): run again once the cause is fixed
  4  nothing could run: no model, or the PACS could not be searched
  1  another Mammoscope error; 2 bad command-line usage; 130 interrupted
"""


def _date(text: str) -> str:
    value = text.replace("-", "")
    if not re.fullmatch(r"\d{8}", value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a date as YYYY-MM-DD or YYYYMMDD")
    try:
        dt.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a calendar date") from None
    return value


def _add_common(p: argparse.ArgumentParser) -> None:
    from pipeline.commands import add_tracking_option

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("--url", required=True, help="the PACS's DICOMweb root, e.g. https://pacs.example.org/dicom-web")
    p.add_argument("--since", type=_date, default=None, help="studies from this date on (YYYY-MM-DD, StudyDate)")
    p.add_argument("--credentials", metavar="FILE", default=None, help="JSON credentials file (see below)")
    p.add_argument("--alias", default="champion", help="registry alias of the screening and density models")
    add_tracking_option(p)
    p.add_argument("--no-maps", action="store_true", help="store only the SR, no map images")
    p.add_argument("--retries", type=int, default=4, help="tries per PACS request (default 4)")
    p.add_argument("--backoff", type=float, default=1.0, help="first wait between tries in s, doubling (default 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per PACS request (default 60)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`pacs score` and `pacs watch`."""
    sub = parser.add_subparsers(dest="pacs_command", metavar="ACTION", required=True)
    score = sub.add_parser("score", help="score studies once", description="score MG studies once and exit")
    _add_common(score)
    score.add_argument("--study", action="append", metavar="UID", help="a Study Instance UID, repeatable")
    w = sub.add_parser("watch", help="poll for new studies and score each once",
                       description="poll the PACS for new or changed MG studies and score each once")
    _add_common(w)
    w.add_argument("--interval", type=float, default=60.0, help="seconds between polls (default 60)")
    w.add_argument("--state", default=None, help="state file (default ~/.local/state/mammoscope/pacs-watch-*.json)")
    w.add_argument("--max-polls", type=int, default=None, help="stop after this many polls (default: run until "
                   "interrupted)")


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Run `pacs score` or `pacs watch`; returns the documented exit status."""
    import os

    from pipeline.errors import MammoscopeError
    from pipeline.pacs.connection import Pacs, PacsError, RetryPolicy, load_credentials
    from pipeline.pacs.run import EXIT_NOTHING_RAN, Summary, find_studies, score_studies

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.retries < 1 or args.backoff < 0 or args.timeout <= 0:
        print("mammoscope pacs: error: --retries >= 1, --backoff >= 0 and --timeout > 0", file=sys.stderr)
        return 2
    pacs = Pacs(args.url, load_credentials(args.credentials),
                RetryPolicy(attempts=args.retries, backoff=args.backoff, timeout=args.timeout))
    if args.pacs_command == "watch":
        from pipeline.pacs.results import algorithm_of_models
        from pipeline.pacs.run import WatchState, default_state_path, watch

        try:
            models = _load_models(args)
        except MammoscopeError as exc:
            _say(Summary(message=str(exc)).text())
            return EXIT_NOTHING_RAN
        state = WatchState(args.state or default_state_path(pacs.url), pacs.url, algorithm_of_models(models))
        since = args.since or dt.date.today().strftime("%Y%m%d")
        _say(f"watching {pacs.url} for MG studies from {since} every {args.interval:g} s (state: {state.path})")
        summary = watch(pacs, models, state, interval=args.interval, since=since, maps=not args.no_maps,
                        max_polls=args.max_polls, progress=_say)
        _say(summary.text())
        return summary.exit_code
    try:  # the PACS first: a wrong URL or credentials is said before any model is loaded
        studies = [uid for uid, _ in find_studies(pacs, args.since, args.study)]
    except PacsError as exc:
        _say(Summary(message=str(exc)).text())
        return EXIT_NOTHING_RAN
    if not studies:
        _say(f"mammoscope pacs: no MG studies found at {pacs.url}" + (f" since {args.since}" if args.since else ""))
        return 0
    try:
        models = _load_models(args)
    except MammoscopeError as exc:
        _say(Summary(message=str(exc)).text())
        return EXIT_NOTHING_RAN
    _say(f"{len(studies)} MG studies to check at {pacs.url}")
    summary = score_studies(pacs, models, studies, maps=not args.no_maps, progress=_say)
    _say(summary.text())
    return summary.exit_code


def _load_models(args: argparse.Namespace) -> dict:
    """{task: Predictor}: the screening model (required) and the density model (optional) at --alias."""
    from pipeline.config.tasks import get_task
    from pipeline.errors import ModelNotFoundError
    from pipeline.serving.predict import load_available_models

    models, missing = load_available_models(("screening", "density"), alias=args.alias,
                                            tracking_uri=args.tracking_uri)
    if not any(get_task(t).levels for t in models):  # the exam-level (screening) model is the one PACS needs
        raise ModelNotFoundError(next((why for t, why in missing.items() if get_task(t).levels), "no screening model"))
    for task, why in missing.items():
        if get_task(task).density_labels:
            _say(f"mammoscope pacs: no density model, the SR will carry no density ({why.split('.')[0]})")
    return models
