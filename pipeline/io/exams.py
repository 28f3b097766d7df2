"""Which exam, breast and view an image belongs to: the one definition used by datasets, training, batch and the app.

An image's ``ExamKey`` is (patient_id, exam_id, laterality, view). Ids are plain strings:

- exam: ``"<patient>|exam:<exam>"`` where both a patient and an exam (a table's ``exam_id`` column, a manifest's
  ``exam_id``, or a DICOM's Study Instance UID) are known; the patient alone where no exam is given (every image of a
  patient is one exam); the exam alone where no patient is given (a DICOM read without a manifest).
- breast: ``"<exam>|<L or R>"``; an image of unknown laterality is a breast of its own, ``"<exam>|<sample id>"``.
- image: the row's ``sample_id`` (a table) or the path the user gave (serving).

Where each part comes from, first found wins (``key_from_meta``):

- patient: the table / manifest ``patient_id``. A DICOM's PatientID is never read (patient-identifying); a DICOM without
  a manifest stands for a patient of its own study: patient_id = the exam id.
- exam: the table / manifest ``exam_id``; else, where a patient is named, the patient (every image of a patient is one
  exam, as in a training table without ``exam_id``); else the DICOM Study Instance UID (``ImageMeta.study_uid``).
  Real files can hold one study per view (the CBIS-DDSM DICOMs do): a manifest's ``patient_id`` puts such views into
  one exam; add ``exam_id`` to keep a patient's visits apart.
- laterality: table / manifest, else DICOM ImageLaterality, Laterality, FrameLaterality (``pipeline.io.dicom``), else
  the file name (``LEFT``/``RIGHT``/``L``/``R`` as a ``_``/``-``-separated token: ``Mass-Test_P_00173_LEFT_CC``,
  ``P100_L_CM_CC``), else unknown (a breast of its own).
- view: table / manifest, else DICOM ViewPosition, the View Code Sequence, a view abbreviation in PatientOrientation
  (the CBIS-DDSM files put ``CC``/``MLO`` there), else the file name (``CC``, ``MLO``, ... as a token), else unknown.

Study UIDs are not patient names or IDs, but an exam id is never logged beside patient values.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, TypeVar

import numpy as np
import pandas as pd

__all__ = ["ExamKey", "exam_id_of", "breast_id_of", "breast_ids", "exam_ids", "level_ids", "exam_keys",
           "key_from_meta", "laterality_of", "side_and_view_from_name", "group_by_exam", "VIEWS"]

T = TypeVar("T")
VIEWS = ("CC", "MLO", "ML", "LM", "LMO", "XCC", "XCCL", "XCCM", "FB", "SIO", "CV", "AT")
_SIDES = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
_TOKENS = re.compile(r"[_\-\s.]+")


@dataclass(frozen=True)
class ExamKey:
    """Which exam, breast side and view one image belongs to (ids as module docstring)."""

    patient_id: str
    exam_id: str
    laterality: str | None = None  # 'L' | 'R' | None (unknown)
    view: str | None = None        # 'CC', 'MLO', ... | None (unknown)

    def breast_id(self, sample_id: str) -> str:
        """``exam|L`` / ``exam|R``; ``exam|<sample_id>`` (a breast of its own) when the laterality is unknown."""
        return breast_id_of(self.exam_id, self.laterality, sample_id)


def _given(value: Any) -> str | None:
    """A non-empty stripped string, or None for missing / blank / NaN."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def exam_id_of(patient_id: Any, exam: Any = None) -> str:
    """The exam id of a patient and an optional exam / study id (module docstring); raises ValueError without both."""
    patient, study = _given(patient_id), _given(exam)
    if patient and study:
        return f"{patient}|exam:{study}"
    if patient or study:
        return patient or study  # type: ignore[return-value]
    raise ValueError("an exam needs a patient_id or an exam / study id; neither was given")


def breast_id_of(exam_id: str, laterality: str | None, sample_id: str) -> str:
    """``exam|L`` / ``exam|R``, else ``exam|<sample_id>``."""
    return f"{exam_id}|{laterality}" if laterality in ("L", "R") else f"{exam_id}|{sample_id}"


def exam_ids(table: pd.DataFrame) -> np.ndarray:
    """Exam id per row of a table with ``patient_id`` (and optional ``exam_id``): (n,) str."""
    pid = table["patient_id"].astype(str)
    if "exam_id" not in table.columns:
        return pid.to_numpy(dtype=str)
    exam = table["exam_id"]
    known = exam.notna().to_numpy() & (exam.astype(str).str.strip() != "").to_numpy()
    return np.where(known, (pid + "|exam:" + exam.astype(str)).to_numpy(), pid.to_numpy()).astype(str)


def breast_ids(table: pd.DataFrame) -> np.ndarray:
    """Breast id per row (exam|laterality, exam|sample_id where the laterality is unknown): (n,) str."""
    side = table["laterality"].astype(object) if "laterality" in table.columns else pd.Series(np.nan, table.index)
    known = side.isin(["L", "R"]).to_numpy()
    exam = pd.Series(exam_ids(table), index=table.index)
    return np.where(known, exam + "|" + side.astype(str), exam + "|" + table["sample_id"].astype(str)).astype(str)


def level_ids(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row -> unit id at each level: {"image": sample_id, "breast": breast id, "exam": exam id}, each (n,) str."""
    return {"image": table["sample_id"].astype(str).to_numpy(), "breast": breast_ids(table), "exam": exam_ids(table)}


def exam_keys(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image ids, breast ids, exam ids) of a table's rows, each (n,) str."""
    ids = level_ids(table)
    return ids["image"], ids["breast"], ids["exam"]


def side_and_view_from_name(path: str | PurePath) -> tuple[str | None, str | None]:
    """(laterality, view) read from a file name's tokens (``..._LEFT_CC.png``, ``P100_L_CM_MLO.png``); the last
    side token and the last view token win, None where the name holds none."""
    side = view = None
    for token in _TOKENS.split(PurePath(str(path)).stem.upper()):
        if token in _SIDES:
            side = _SIDES[token]
        elif token in VIEWS:
            view = token
    return side, view


def laterality_of(laterality: Any = None, meta: Any = None, path: str | PurePath | None = None) -> str | None:
    """'L' / 'R' / None of one image, first found wins: the given value (``L``/``R``/``LEFT``/``RIGHT``, any case),
    the file's tags (``ImageMeta.laterality``), the file name's tokens. Keys and samples both read it, so the breast an
    image is paired with and the side its sample is mirrored from never disagree."""
    given = _SIDES.get((_given(laterality) or "").upper())
    if given:
        return given
    tagged = _SIDES.get(str(getattr(meta, "laterality", None) or "").upper())
    return tagged or (side_and_view_from_name(path)[0] if path is not None else None)


def key_from_meta(*, path: str | PurePath | None = None, meta: Any = None, patient_id: Any = None,
                  exam_id: Any = None, laterality: Any = None, view: Any = None) -> ExamKey:
    """The ExamKey of one image from what is known, first found wins: explicit values (manifest / table), then the
    ImageMeta read from the file (``study_uid``, ``laterality``, ``view``), then the file name; raises ValueError
    when neither a patient, an exam nor a study UID is known (see the module docstring)."""
    name_view = side_and_view_from_name(path)[1] if path is not None else None
    study = _given(exam_id) or (None if _given(patient_id) else _given(getattr(meta, "study_uid", None)))
    exam = exam_id_of(patient_id, study)
    side = laterality_of(laterality, meta, path)
    seen = (_given(view) or "").upper() or getattr(meta, "view", None) or name_view
    return ExamKey(patient_id=_given(patient_id) or exam, exam_id=exam, laterality=side, view=seen or None)


def group_by_exam(items: Iterable[T], key: Callable[[T], Hashable] | Mapping[Any, Hashable] | None = None
                  ) -> dict[Hashable, list[T]]:
    """Items grouped by exam id, exams and items in first-seen order; `key` maps an item to its exam id (default:
    ``item.key.exam_id``, as an ExamKey-carrying item has)."""
    if key is None:
        def key(item: Any) -> Hashable:
            return item.key.exam_id
    elif isinstance(key, Mapping):
        key = key.__getitem__
    out: dict[Hashable, list[T]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out
