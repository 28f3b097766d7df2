"""`mammoscope pacs watch` (#30): polls, scores a study once it has settled, keeps a state file of UIDs only, and
stores nothing twice; a malformed instance is named by its UID and the rest of its exam is still scored."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pydicom
import pytest

from tests._pacs_data import PATIENT_VALUES

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(600)]


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str  # the command's stderr and every log record (-v: DEBUG)


@pytest.fixture
def cli(capsys, caplog, monkeypatch):
    """`mammoscope -v pacs ARGS` in this process (no interpreter start per call): exit status, output and logs."""
    from pipeline.cli import main

    for key in ("MAMMOSCOPE_PACS_USER", "MAMMOSCOPE_PACS_PASSWORD", "MAMMOSCOPE_PACS_TOKEN",
                "MAMMOSCOPE_PACS_CREDENTIALS"):
        monkeypatch.delenv(key, raising=False)

    def run(*args: str) -> Run:
        capsys.readouterr()
        caplog.clear()
        with caplog.at_level("DEBUG"):
            code = main(["-v", "pacs", *args])
        out = capsys.readouterr()
        return Run(code, out.out, out.err + caplog.text)

    return run


def _series_counts(orthanc, study: str) -> dict[str, int]:
    import requests

    counts: dict[str, int] = {}
    for inst in orthanc.instances_of(study):
        series = requests.get(f"{orthanc.url}/series/{inst['ParentSeries']}", timeout=10).json()
        modality = series["MainDicomTags"]["Modality"]
        counts[modality] = counts.get(modality, 0) + 1
    return counts


def test_watch_scores_a_settled_study_once_and_keeps_only_uids(orthanc, models_store, cdd_exam, tmp_path, cli):
    for f in cdd_exam:
        orthanc.upload(f)
    study = str(pydicom.dcmread(cdd_exam[0], stop_before_pixels=True).StudyInstanceUID)
    state = tmp_path / "watch.json"
    common = ("--url", orthanc.dicomweb, "--tracking-uri", models_store.tracking_uri, "--since", "2024-01-01")
    run = cli("watch", *common, "--interval", "0.3", "--max-polls", "4", "--state", str(state))
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr.count(": scored: ") == 1, run.stderr[-2000:]
    assert _series_counts(orthanc, study) == {"MG": 4, "OT": 4, "SR": 1}
    saved = json.loads(state.read_text())
    assert list(saved["studies"]) == [study] and saved["studies"][study]["status"] in ("scored", "already scored")
    text = state.read_text() + run.stdout + run.stderr
    assert not [v for v in PATIENT_VALUES if v in text] and orthanc.dicomweb not in state.read_text()
    # a second watch (the state says done) and a plain score (the PACS says done) store nothing
    before = _series_counts(orthanc, study)
    again = cli("watch", *common, "--interval", "0.1", "--max-polls", "2", "--state", str(state))
    assert again.returncode == 0 and ": scored: " not in again.stderr
    score = cli("score", *common, "--study", study, "--study", "1.2.3.4.5.404")
    assert score.returncode == 0 and f"study {study}: already scored" in score.stderr
    assert "study 1.2.3.4.5.404: no MG images" in score.stderr
    assert _series_counts(orthanc, study) == before


def test_a_malformed_instance_is_named_and_the_rest_of_the_exam_is_scored(orthanc, models_store, cdd_exam,
                                                                        tmp_path, cli):
    import highdicom as hd
    from dicomweb_client.api import DICOMwebClient
    from pydicom.uid import generate_uid

    for f in cdd_exam:
        orthanc.upload(f)
    broken = pydicom.dcmread(cdd_exam[0])
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    broken.PixelData = broken.PixelData[: len(broken.PixelData) // 3]  # truncated pixels: the reader refuses it
    path = tmp_path / "broken.dcm"
    broken.save_as(path, enforce_file_format=True)
    orthanc.upload(path)
    run = cli("score", "--url", orthanc.dicomweb, "--tracking-uri", models_store.tracking_uri)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "1 image(s) refused" in run.stderr and not [v for v in PATIENT_VALUES if v in run.stderr]
    client = DICOMwebClient(orthanc.dicomweb)
    study = str(broken.StudyInstanceUID)
    (sr_series,) = client.search_for_series(study, search_filters={"Modality": "SR"})
    (sr,) = client.retrieve_series(study, sr_series["0020000E"]["Value"][0])
    report = hd.sr.ComprehensiveSR.from_dataset(sr)
    (exam,) = [g for g in report.content.get_image_measurement_groups() if g.tracking_identifier == "exam"]
    texts = [i.TextValue for i in exam[0].ContentSequence if i.ValueType == "TEXT"]
    assert any(t.startswith(f"not scored: instance {broken.SOPInstanceUID}") for t in texts), texts
    assert len(exam.source_images) == 4
