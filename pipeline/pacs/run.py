"""`mammoscope pacs score` / `watch`: find MG studies (QIDO-RS), skip those already scored by this algorithm version,
fetch the rest (WADO-RS), score each exam, store the maps and the SR (STOW-RS) into the study.

Exactly once: before scoring a study the PACS itself is asked for an SR of this algorithm name and version that
references every MG image of the study; results are sent in one STOW-RS request, maps first and the SR last (the
commit marker), with UIDs derived from the study, algorithm and sources, so a run killed mid-study leaves either
nothing, or maps the next run rewrites with the same UIDs (the PACS keeps one copy) and completes with the SR.
`watch` keeps a local state file of study UIDs (no patient values) so that each poll asks the PACS only about new
or changed studies. Study UIDs name the work in every message; no patient attribute is ever read into a message.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from pipeline.errors import MammoscopeError
from pipeline.pacs.connection import Pacs, PacsError, PacsUnreachable
from pipeline.pacs.results import (ALGORITHM_NAME, Algorithm, algorithm_of_models, build_map, build_report,
                                   report_algorithm)

__all__ = ["EXIT_OK", "EXIT_FAILED", "EXIT_NOTHING_RAN", "Outcome", "Summary", "find_studies", "score_study",
           "score_studies", "watch", "WatchState", "UNREACHABLE_STOP"]

log = logging.getLogger(__name__)
EXIT_OK, EXIT_FAILED, EXIT_NOTHING_RAN = 0, 3, 4
UNREACHABLE_STOP = 2  # studies in a row the PACS did not answer for before the rest are reported not attempted
MEDIA_TYPES = (("application/dicom", "*"),)  # the instances as stored: no transcoding on the PACS
_TAG = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E", "SOPInstanceUID": "00080018",
        "Modality": "00080060", "NumberOfStudyRelatedInstances": "00201208"}


@dataclass
class Outcome:
    """What happened to one study: status is "scored", "already scored", "no MG images", "failed" or
    "not attempted"."""

    study: str
    status: str
    n_images: int = 0
    stored: int = 0
    message: str = ""
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One console line (study UID, status, counts; never a patient value)."""
        detail = {"scored": f"{self.n_images} image(s) scored, {self.stored} object(s) stored",
                  "already scored": "an SR of this model version is there: skipped"}.get(self.status, self.message)
        extra = f"; {len(self.errors)} image(s) refused" if self.errors else ""
        return f"study {self.study}: {self.status}: {detail}{extra}" + \
            (f" ({self.seconds:.1f} s)" if self.seconds else "")


@dataclass
class Summary:
    """All outcomes of a run and its exit status (0 all done, 3 some studies failed, 4 nothing could run)."""

    outcomes: list[Outcome] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status in ("failed", "not attempted")]

    @property
    def exit_code(self) -> int:
        if self.message and not self.outcomes:
            return EXIT_NOTHING_RAN
        return EXIT_FAILED if self.failed else EXIT_OK

    def text(self) -> str:
        """The end-of-run summary for stderr."""
        if self.message and not self.outcomes:
            return f"mammoscope pacs: {self.message}"
        counts: dict[str, int] = {}
        for o in self.outcomes:
            counts[o.status] = counts.get(o.status, 0) + 1
        lines = [f"{len(self.outcomes)} studies in {self.seconds:.1f} s: " +
                 ", ".join(f"{n} {status}" for status, n in counts.items())]
        if self.failed:
            lines.append("failed studies (run again to complete them; scored ones are skipped):")
            lines += [f"  {o.study}: {o.message}" for o in self.failed]
        return "\n".join(lines)


def _value(entry: Mapping[str, Any], keyword: str) -> Any:
    values = (entry.get(_TAG[keyword]) or {}).get("Value") or [None]
    return values[0]


PAGE = 200  # QIDO-RS results per request


def _search_all(search: Callable[..., list], key: str) -> list[dict]:
    """Every result of a QIDO-RS search, paged by limit/offset; stops at a short page, and at a page of nothing new
    (a server that ignores offset, as Orthanc's DICOMweb plugin does at some levels, would otherwise loop)."""
    out: list[dict] = []
    seen: set[Any] = set()
    offset = 0
    while True:
        page = search(limit=PAGE, offset=offset)
        fresh = [e for e in page if _value(e, key) not in seen]
        seen.update(_value(e, key) for e in fresh)
        out += fresh
        if len(page) < PAGE or not fresh:
            return out
        offset += len(page)


def find_studies(pacs: Pacs, since: str | None = None, studies: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """[(StudyInstanceUID, number of instances)] of the studies with MG images (QIDO-RS, ModalitiesInStudy=MG), from
    `since` (YYYYMMDD, inclusive) or among `studies`, in the PACS's order."""
    fields = ["StudyInstanceUID", "NumberOfStudyRelatedInstances"]
    if studies:  # each named study by its UID (no listing of the whole archive); one not found is not MG here
        out = []
        for uid in dict.fromkeys(studies):
            found = pacs.call("search for the study", lambda: pacs.client.search_for_studies(
                search_filters={"StudyInstanceUID": uid}, fields=fields), uid)
            out.append((uid, int(_value(found[0], "NumberOfStudyRelatedInstances") or 0) if found else -1))
        return out
    filters: dict[str, Any] = {"ModalitiesInStudy": "MG"}
    if since:
        filters["StudyDate"] = f"{since}-"
    found = pacs.call("search for MG studies", lambda: _search_all(lambda **page: pacs.client.search_for_studies(
        search_filters=filters, fields=fields, **page), "StudyInstanceUID"))
    return [(str(_value(e, "StudyInstanceUID")), int(_value(e, "NumberOfStudyRelatedInstances") or 0)) for e in found]


def _mg_instances(pacs: Pacs, study: str) -> dict[str, list[str]]:
    """{series UID: [SOP instance UIDs]} of the study's MG series."""
    series = pacs.call("search for MG series", lambda: pacs.client.search_for_series(
        study, search_filters={"Modality": "MG"}, fields=["SeriesInstanceUID", "Modality"]), study)
    out = {}
    for s in series:
        if _value(s, "Modality") not in (None, "MG"):
            continue
        uid = str(_value(s, "SeriesInstanceUID"))
        inst = pacs.call("search for MG instances", lambda: _search_all(
            lambda **page: pacs.client.search_for_instances(study, uid, fields=["SOPInstanceUID"], **page),
            "SOPInstanceUID"), study)
        out[uid] = [str(_value(i, "SOPInstanceUID")) for i in inst]
    return out


def existing_report(pacs: Pacs, study: str, algorithm: Algorithm, sources: Iterable[str]) -> str | None:
    """The SOP instance UID of an SR in `study` by this algorithm name and version that references every UID in
    `sources`, else None (QIDO-RS for SR series, then their DICOM JSON metadata)."""
    from pydicom import Dataset

    wanted = set(sources)
    series = pacs.call("search for SR series", lambda: pacs.client.search_for_series(
        study, search_filters={"Modality": "SR"}, fields=["SeriesInstanceUID", "Modality"]), study)
    for s in series:
        if _value(s, "Modality") not in (None, "SR"):
            continue
        uid = str(_value(s, "SeriesInstanceUID"))
        metadata = pacs.call("read SR metadata", lambda: pacs.client.retrieve_series_metadata(study, uid), study)
        for m in metadata:
            ds = Dataset.from_json(m, bulk_data_uri_handler=lambda *_: b"")
            name, version, refs = report_algorithm(ds)
            if name == ALGORITHM_NAME and version == algorithm.version and wanted <= refs:
                return str(getattr(ds, "SOPInstanceUID", "") or "")
    return None


def _fetch(pacs: Pacs, study: str, series: Iterable[str]) -> list[Any]:
    out = []
    for uid in series:
        out += pacs.call("fetch MG instances", lambda: pacs.client.retrieve_series(study, uid,
                                                                                   media_types=MEDIA_TYPES), study)
    return out


def _read(datasets: Sequence[Any], folder: Path) -> tuple[list[Any], list[Any], list[str]]:
    """(ExamImage per readable MG image, their datasets, errors naming the SOP instance): each instance is written
    to `folder` and read by pipeline.io.imageio.read_image, the same reader as `mammoscope predict`; its exam key
    comes from its tags (pipeline.serving.exam.exam_image: the Study Instance UID, laterality, view)."""
    import warnings

    from pipeline.io.imageio import read_image
    from pipeline.serving.exam import exam_image

    images, kept, errors = [], [], []
    for ds in datasets:
        sop = str(getattr(ds, "SOPInstanceUID", "") or "")
        if not sop or "PixelData" not in ds:
            errors.append(f"instance {sop or '(no SOP Instance UID)'}: no pixel data")
            continue
        path = folder / f"{hashlib.sha256(sop.encode()).hexdigest()[:16]}.dcm"
        try:
            ds.save_as(path, enforce_file_format=True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the reader's warnings travel in meta.warnings
                image, meta = read_image(path)
            images.append(exam_image(image, meta, sop))
        except MammoscopeError as exc:
            errors.append(f"instance {sop}: {str(exc).replace(str(path), 'image')}")
            continue
        except (ValueError, OSError, AttributeError) as exc:
            errors.append(f"instance {sop}: unreadable ({type(exc).__name__})")
            continue
        kept.append(ds)
    return images, kept, errors


def score_study(pacs: Pacs, models: Mapping[str, Any], algorithm: Algorithm, study: str, *, maps: bool = True,
                progress: Callable[[str], None] | None = None) -> Outcome:
    """Score one study unless it already holds this algorithm's SR: fetch, score, store maps + SR in one STOW-RS."""
    from pipeline.serving.exam import score_exam, scorable

    start = time.perf_counter()
    mg = _mg_instances(pacs, study)
    sources = [uid for uids in mg.values() for uid in uids]
    if not sources:
        return Outcome(study, "no MG images", message="the study holds no MG series")
    if existing_report(pacs, study, algorithm, sources):
        return Outcome(study, "already scored", n_images=len(sources))
    if progress:
        progress(f"study {study}: scoring {len(sources)} image(s)")
    folder = Path(tempfile.mkdtemp(prefix="mammoscope-pacs-"))
    try:
        datasets = _fetch(pacs, study, mg)
        images, kept, errors = _read(datasets, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not images:
        return Outcome(study, "failed", n_images=0, errors=errors,
                       message="no MG image could be read: " + "; ".join(errors)[:500])
    keys = {im.key.exam_id for im in images}
    if keys != {study}:  # the exam is the study (pipeline.io.exams); anything else is a PACS inconsistency
        return Outcome(study, "failed", n_images=len(images), errors=errors,
                       message=f"its instances name {len(keys)} other Study Instance UID(s) in their tags")
    ok, failed = scorable(models, images)  # a view without a breast is reported, the rest of the exam scored
    refused = [f"instance {images[i].path}: {str(exc).replace(f'{images[i].path}: ', '', 1)}" for i, exc in failed]
    if not ok:
        return Outcome(study, "failed", n_images=0, errors=errors + refused,
                       message="no MG image could be scored: " + "; ".join(errors + refused)[:500])
    images, kept, errors = [images[i] for i in ok], [kept[i] for i in ok], errors + refused
    result = score_exam(models, images, maps=maps, errors=errors)
    objects = []
    if maps:
        scored = [str(ds.SOPInstanceUID) for ds in kept]
        for n, (im, ex, ds) in enumerate(zip(result.images, images, kept), start=1):
            if im.heatmap is not None:
                objects.append(build_map(im, ex.image, ds, study, algorithm, n, scored))
    objects.append(build_report(result, kept, study, algorithm))  # last: the commit marker
    reply = pacs.call("store results", lambda: pacs.client.store_instances(objects, study_instance_uid=study), study)
    failed = list(getattr(reply, "FailedSOPSequence", []) or [])
    if failed:
        reasons = sorted({str(getattr(f, "FailureReason", "?")) for f in failed})
        raise PacsError(f"study {study}: store results: the PACS refused {len(failed)} of {len(objects)} object(s) "
                        f"(failure reason {', '.join(reasons)}); the study will be scored again next run")
    return Outcome(study, "scored", n_images=len(images), stored=len(objects), errors=errors,
                   seconds=time.perf_counter() - start)


def _guarded(pacs: Pacs, models: Mapping[str, Any], algorithm: Algorithm, study: str, maps: bool,
             progress: Callable[[str], None] | None) -> Outcome:
    try:
        return score_study(pacs, models, algorithm, study, maps=maps, progress=progress)
    except PacsUnreachable as exc:
        return Outcome(study, "failed", message=str(exc).replace(f"study {study}: ", ""), errors=["unreachable"])
    except MammoscopeError as exc:
        return Outcome(study, "failed", message=str(exc).replace(f"study {study}: ", ""))
    except Exception as exc:  # noqa: BLE001 - one bad study must not stop the others; the type only (no values)
        return Outcome(study, "failed", message=f"internal error ({type(exc).__name__}) while scoring; please report "
                       "it with the study UID")


def score_studies(pacs: Pacs, models: Mapping[str, Any], studies: Sequence[str], *, maps: bool = True,
                  progress: Callable[[str], None] | None = None) -> Summary:
    """Each study once (already-scored ones skipped); after UNREACHABLE_STOP studies in a row the PACS did not
    answer for, the rest are reported "not attempted" rather than each waiting out its retries."""
    algorithm = algorithm_of_models(models)
    start = time.perf_counter()
    summary = Summary()
    unreachable = 0
    for k, study in enumerate(studies, start=1):
        if unreachable >= UNREACHABLE_STOP:
            summary.outcomes.append(Outcome(study, "not attempted", message="the PACS stopped answering"))
            continue
        outcome = _guarded(pacs, models, algorithm, study, maps, progress)
        unreachable = unreachable + 1 if "unreachable" in outcome.errors else 0
        if "unreachable" in outcome.errors:
            outcome.errors = []
        summary.outcomes.append(outcome)
        if progress:
            progress(f"[{k}/{len(studies)}] {outcome.line()}")
    summary.seconds = time.perf_counter() - start
    return summary


# --------------------------------------------------------------------------------------------------------------------
# watch
# --------------------------------------------------------------------------------------------------------------------
def default_state_path(url: str) -> Path:
    """~/.local/state/mammoscope/pacs-watch-<hash of the URL>.json (XDG_STATE_HOME respected)."""
    root = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "mammoscope"
    return root / f"pacs-watch-{hashlib.sha256(url.encode()).hexdigest()[:12]}.json"


class WatchState:
    """The watch's memory: per study UID the instance count last seen and whether it was scored (no patient value,
    no URL: a hash of it). Written atomically (tmp file + os.replace) after every change."""

    def __init__(self, path: str | Path, url: str, algorithm: Algorithm) -> None:
        self.path = Path(path)
        self.key = {"url": hashlib.sha256(url.encode()).hexdigest()[:16], "algorithm": algorithm.version}
        self.studies: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise MammoscopeError(f"watch state {self.path}: unreadable ({type(exc).__name__}); delete it (the PACS "
                                      "check still prevents scoring a study twice) or pass another --state") from None
            if {k: data.get(k) for k in self.key} == self.key:
                self.studies = dict(data.get("studies") or {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({**self.key, "studies": self.studies}, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)


def watch(pacs: Pacs, models: Mapping[str, Any], state: WatchState, *, interval: float, since: str | None,
          maps: bool = True, max_polls: int | None = None, progress: Callable[[str], None] | None = None,
          sleep: Callable[[float], None] = time.sleep) -> Summary:
    """Poll for MG studies every `interval` s; score a new or changed one once its instance count has not moved
    for one poll (a modality may still be sending). Runs `max_polls` polls (None: until interrupted)."""
    algorithm = algorithm_of_models(models)
    summary = Summary()
    polls = 0
    while max_polls is None or polls < max_polls:
        polls += 1
        try:
            found = find_studies(pacs, since)
        except PacsError as exc:
            if progress:
                progress(f"poll {polls}: {exc}")
            found = []
        for study, count in found:
            entry = state.studies.setdefault(study, {})
            if entry.get("status") in ("scored", "already scored", "no MG images") and entry.get("count") == count:
                continue
            if entry.get("seen") != count:  # new or changed: wait one poll for it to settle
                entry["seen"] = count
                state.save()
                continue
            outcome = _guarded(pacs, models, algorithm, study, maps, progress)
            entry.update(status=outcome.status, count=count)
            state.save()
            summary.outcomes.append(outcome)
            if progress:
                progress(outcome.line())
        if max_polls is None or polls < max_polls:
            sleep(interval)
    return summary
