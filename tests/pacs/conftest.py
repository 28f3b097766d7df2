"""PACS fixtures: a real Orthanc (skipped, saying why, where Debian's orthanc is not installed), a tiny screening +
density champion pair in one temporary MLflow store, and a four-view CDD-CESM exam wrapped as MG DICOM."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests._orthanc import Orthanc, missing_reason
from tests._pacs_data import PacsStore, pacs_store, wrap_exam


@pytest.fixture(scope="session")
def models_store(tmp_path_factory) -> PacsStore:
    """Tiny mammoscope-screening and mammoscope-density champions (CDD-CESM / mini-MIAS, seconds each)."""
    return pacs_store(tmp_path_factory.mktemp("pacs-models"))


@pytest.fixture
def orthanc(tmp_path) -> Orthanc:
    """A fresh Orthanc with the DICOMweb plugin on free loopback ports; stopped and removed after the test."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.remove_storage()


@pytest.fixture(scope="session")
def cdd_exam(tmp_path_factory, cdd_dir) -> list[Path]:
    """Four MG DICOM files (L/R x CC/MLO) of one CDD-CESM patient, one study, with made-up patient attributes."""
    return wrap_exam(cdd_dir, tmp_path_factory.mktemp("cdd-exam"))


@pytest.fixture(scope="session")
def more_exams(tmp_path_factory, cdd_dir) -> list[list[Path]]:
    """Two more four-view CDD-CESM exams (other patients, other studies), small images for the recovery tests."""
    root = tmp_path_factory.mktemp("cdd-more")
    return [wrap_exam(cdd_dir, root / p, patient=p) for p in ("CDDCESM_P100", "CDDCESM_P102")]
