"""Test data for the PACS path, shared by tests/pacs and benchmarks/pacs.py: a tiny screening + density champion
pair in one MLflow store, and a CDD-CESM four-view exam wrapped as MG DICOM (pydicom) with made-up patient values
that the tests look for in every output."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests._tiny_store import TINY_SCREENING

__all__ = ["PacsStore", "pacs_store", "wrap_exam", "PATIENT_VALUES", "SCREENING_TINY"]

# made-up identifying values of the wrapped exam: none may appear in any output, log or state file
PATIENT_VALUES = ("Testpatient^Secretname", "PID-SECRET-4711", "ACC-SECRET-0815", "19580317")
SCREENING_TINY = TINY_SCREENING  # the suite's one tiny screening recipe


@dataclass(frozen=True)
class PacsStore:
    tracking_uri: str
    folder: Path


_STORES: dict[str, PacsStore] = {}


def pacs_store(folder: Path) -> PacsStore:
    """Train (once per process) the tiny screening champion (CDD-CESM) and density champion (mini-MIAS); a store
    this function trained before may be reused across runs with $MAMMOSCOPE_TEST_PACS_STORE=<its folder>."""
    reuse = os.environ.get("MAMMOSCOPE_TEST_PACS_STORE")
    if reuse and (Path(reuse) / "mlflow.db").is_file():
        return PacsStore(f"sqlite:///{Path(reuse) / 'mlflow.db'}", Path(reuse))
    if "store" not in _STORES:
        from pipeline.config.experiment import EXPERIMENTS_DIR, load_experiment
        from pipeline.training.train import train_experiment
        from tests._tiny_store import tiny_experiment

        uri = f"sqlite:///{folder / 'mlflow.db'}"
        for exp in (load_experiment(EXPERIMENTS_DIR / "cdd_cesm_screening.yaml", SCREENING_TINY),
                    tiny_experiment("density")):
            result = train_experiment(exp, uri, cache_dir=folder / "cache")
            assert result.promoted, result.promotion_reason
        _STORES["store"] = PacsStore(uri, folder)
    return _STORES["store"]


def wrap_exam(cdd_dir: Path, out: Path, patient: str = "CDDCESM_P10") -> list[Path]:
    """The four CDD-CESM PNGs of `patient` as Digital Mammography For Presentation DICOM files of one new study,
    with laterality, view (code sequence too), orientation and made-up patient attributes (PATIENT_VALUES)."""
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rows = [r for r in csv.DictReader(open(cdd_dir / "manifest.csv", newline="")) if r["patient_id"] == patient]
    assert len(rows) == 4, f"{patient}: expected 4 views, found {len(rows)}"
    study = generate_uid(entropy_srcs=["mammoscope-test-study", patient])
    series = generate_uid(entropy_srcs=["mammoscope-test-series", patient])
    views = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, r in enumerate(sorted(rows, key=lambda r: (r["laterality"], r["view"])), start=1):
        pixels = np.asarray(Image.open(cdd_dir / r["file"]).convert("L"), dtype=np.uint8)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray For Presentation
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["mammoscope-test-sop", patient, r["file"]])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.AccessionNumber, ds.PatientBirthDate = PATIENT_VALUES
        ds.PatientSex = "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.ReferringPhysicianName = "20240102", "101500", "1", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MG", 1, n
        ds.Manufacturer, ds.PresentationIntentType = "CDD-CESM (wrapped by the tests)", "FOR PRESENTATION"
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.BodyPartExamined, ds.ImageLaterality, ds.Laterality = "BREAST", r["laterality"], r["laterality"]
        ds.ViewPosition = r["view"]
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = views[r["view"]][0], "SCT", views[r["view"]][1]
        ds.ViewCodeSequence = [code]
        ds.PatientOrientation = ["A", "R"] if r["laterality"] == "L" else ["P", "L"]
        ds.ImagerPixelSpacing = [0.1, 0.1]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.tobytes()
        path = out / f"{Path(r['file']).stem}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
