"""Acceptance (#30) against a real Orthanc: the eight CBIS-DDSM studies and a four-view CDD-CESM exam wrapped as MG
DICOM are scored by `mammoscope pacs score`; the SR and maps read back over DICOMweb (highdicom) carry exactly
`mammoscope predict`'s figures for the same files, reference every source image and no patient value reaches the
command's output; a second run stores nothing; a SIGKILL mid-study or a PACS stopped mid-run is completed by the
next run with exactly one SR per exam."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from pipeline.paths import PROJECT_DIR
from tests._pacs_data import PATIENT_VALUES

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(900)]
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMMOSCOPE_PACS")}
    env["PYTHONPATH"] = str(PROJECT_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return env


def _command(orthanc, store, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "-v", "pacs", "score", "--url", orthanc.dicomweb,
            "--tracking-uri", store.tracking_uri, "--retries", "2", "--backoff", "0.2", "--timeout", "20", *extra]


def _pacs(orthanc, store, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_command(orthanc, store, *extra), capture_output=True, text=True, env=_env(), timeout=600)


def _patient_values(paths) -> set[str]:
    values = set(PATIENT_VALUES)
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "OtherPatientIDs"):
            v = str(ds.get(kw) or "").strip()
            if len(v) >= 4:
                values.add(v)
    return values


def _results(orthanc, study: str) -> tuple[list, list]:
    """(SR datasets, SC datasets) of a study, read over DICOMweb."""
    from dicomweb_client.api import DICOMwebClient

    client = DICOMwebClient(orthanc.dicomweb)
    srs, maps = [], []
    for s in client.search_for_series(study):
        modality = s["00080060"]["Value"][0]
        uid = s["0020000E"]["Value"][0]
        if modality in ("SR", "OT"):
            for ds in client.retrieve_series(study, uid):
                (srs if ds.SOPClassUID == SR_CLASS else maps).append(ds)
    return srs, maps


def _count(orthanc, study: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for inst in orthanc.instances_of(study):
        modality = inst.get("MainDicomTags", {}).get("Modality") or orthanc_series_modality(orthanc, inst)
        counts[modality] = counts.get(modality, 0) + 1
    return counts


def orthanc_series_modality(orthanc, inst) -> str:
    import requests

    return requests.get(f"{orthanc.url}/series/{inst['ParentSeries']}", timeout=10).json()["MainDicomTags"]["Modality"]


def _study_of(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _sop_of(path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _measure(group, code_value: str) -> float | None:
    values = [m.value for m in group.get_measurements() if m.name.value == code_value]
    return values[0] if values else None


def _evals(group, code_value: str) -> list[str]:
    return [e.value.meaning for e in group.get_qualitative_evaluations() if e.name.value == code_value]


def _predict(store, files: list[Path], tmp: Path) -> dict[str, pd.DataFrame]:
    """`mammoscope predict` on the same files, with a manifest naming each file's study as its exam (the PACS
    path's exam = study): results, density per exam, screening per image / breast / exam."""
    from pipeline.cli import main

    manifest = tmp / "manifest.csv"
    pd.DataFrame({"path": [str(f) for f in files], "exam_id": [_study_of(f) for f in files]}).to_csv(
        manifest, index=False)
    out = tmp / "predict.csv"
    assert main(["predict", str(manifest), "--tracking-uri", store.tracking_uri, "--out", str(out), "--n-jobs", "1",
                 "--no-progress", "--overwrite"]) == 0
    read = lambda suffix: pd.read_csv(out.with_name(f"predict{suffix}.csv"))  # noqa: E731
    return {"images": read(""), "density": read(".exams"), "context": read(".screening.images"),
            "breasts": read(".screening.breasts"), "exams": read(".screening.exams")}


def test_pacs_score_stores_what_predict_computes_once_and_no_patient_value(orthanc, models_store, cbis_dir,
                                                                             cdd_exam, tmp_path, capsys):
    import highdicom as hd

    from pipeline.evaluation.conformal import set_labels

    cbis = sorted((cbis_dir / "dicom").glob("*.dcm"))
    assert len(cbis) == 8
    files = cbis + list(cdd_exam)
    for f in files:
        orthanc.upload(f)
    run = _pacs(orthanc, models_store)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    leaked = [v for v in _patient_values(files) if v in output]
    assert not leaked, f"patient values in the command's output: {leaked}"

    expected = _predict(models_store, files, tmp_path)
    images = expected["images"].assign(study=[_study_of(p) for p in expected["images"]["path"]],
                                       sop=[_sop_of(p) for p in expected["images"]["path"]])
    context = expected["context"].set_index("sample_id")
    studies = sorted(set(images["study"]))
    assert len(studies) == 9  # eight single-image CBIS-DDSM studies + the four-view exam
    for study in studies:
        srs, maps = _results(orthanc, study)
        assert len(srs) == 1, f"study {study}: {len(srs)} SRs"
        mine = images[images["study"] == study]
        sr = hd.sr.ComprehensiveSR.from_dataset(srs[0])
        assert sr.StudyInstanceUID == study and sr.SeriesDescription.endswith("decision support, not a diagnosis")
        groups = sr.content.get_image_measurement_groups()
        by_id = {}
        for g in groups:
            by_id.setdefault(g.tracking_identifier, []).append(g)
        # the exam: screening probability, operating point and call; density = mean of its images, arg-max call
        exam_row = expected["exams"].set_index("exam_id").loc[study]
        (exam,) = by_id["exam"]
        assert _measure(exam, "111047") == exam_row["screening_p_malignant"]
        assert _measure(exam, "THRESHOLD") == exam_row["screening_threshold"]
        assert _evals(exam, "CALL") == [exam_row["screening_call"]]
        assert _measure(exam, "SENS") is not None and _measure(exam, "SPEC") is not None
        density_row = expected["density"].set_index("exam").loc[study]
        for cls in ("F", "G", "D"):
            assert _measure(exam, f"P-DENSITY-{cls}") == density_row[f"density_p_{cls}"]
        assert _evals(exam, "129715009") == [density_row["density_call"]]
        assert 1 <= len(_evals(exam, "DENSITY-SET")) and set(_evals(exam, "DENSITY-SET")) <= {"F", "G", "D"}
        texts = [i.TextValue for i in exam[0].ContentSequence if i.ValueType == "TEXT"]
        assert "Mammoscope: decision support, not a diagnosis" in texts
        # every source image referenced: by the exam group and by one image group each
        referenced = {ref.referenced_sop_instance_uid for ref in exam.source_images}
        assert referenced == set(mine["sop"])
        image_groups = by_id["image"]
        assert len(image_groups) == len(mine)
        for g in image_groups:
            (src,) = g.source_images
            row = mine[mine["sop"] == src.referenced_sop_instance_uid].iloc[0]
            ctx = context.loc[row["path"]]
            assert _measure(g, "P-SINGLE") == row["screening_p_malignant"]
            assert _measure(g, "111047") == ctx["screening_p_malignant"]
            assert _measure(g, "THRESHOLD") == ctx["screening_threshold"]
            assert _evals(g, "CALL") == [ctx["screening_call"]]
            members = set(_evals(g, "SET"))
            classes = ["not_malignant", "malignant"]
            assert set_labels(classes, np.array([[c in members for c in classes]]),
                              several_is_uncertain=True) == [row["screening_set"]]
            image_texts = [i.TextValue for i in g[0].ContentSequence if i.ValueType == "TEXT"]
            assert f"breast density prediction set: {row['density_set']}" in image_texts
            for cls in ("F", "G", "D"):
                assert _measure(g, f"P-DENSITY-{cls}") == row[f"density_p_{cls}"]
            assert _evals(g, "129715009") == [row["density_call"]]
        # breasts: the CDD exam has L and R (views fused), a CBIS image is a breast of its own
        breast_rows = expected["breasts"][expected["breasts"]["exam_id"] == study]
        breast_groups = [g for key, gs in by_id.items() if key.startswith("breast") for g in gs]
        assert sorted(_measure(g, "111047") for g in breast_groups) == sorted(breast_rows["screening_p_malignant"])
        # one map per image, in its own series, referencing its source, "not for diagnosis" burned in
        assert len(maps) == len(mine)
        for m in maps:
            assert m.SOPClassUID == SC_CLASS and m.BurnedInAnnotation == "YES" and m.StudyInstanceUID == study
            assert m.SourceImageSequence[0].ReferencedSOPInstanceUID in set(mine["sop"])
            band = m.pixel_array[:8]
            assert (band[..., 0] > 200).any() and (band[..., 2] < 50).any()  # yellow text on the black band
        assert len({m.SeriesInstanceUID for m in maps}) == 1 and maps[0].SeriesInstanceUID != srs[0].SeriesInstanceUID

    # run twice: the second run (in this process: no interpreter start) finds every SR and stores nothing
    from pipeline.cli import main

    before = {s: _count(orthanc, s) for s in studies}
    capsys.readouterr()
    assert main(_command(orthanc, models_store)[3:]) == 0
    assert capsys.readouterr().err.count(": already scored: ") == len(studies)
    assert {s: _count(orthanc, s) for s in studies} == before


def _one_sr_per_study(orthanc, studies) -> None:
    for s in studies:
        srs, maps = _results(orthanc, s)
        assert len(srs) == 1, f"study {s}: {len(srs)} SRs"
        assert len(maps) == len({m.SourceImageSequence[0].ReferencedSOPInstanceUID for m in maps})


def test_sigkill_mid_study_then_rerun_gives_one_sr_per_exam(orthanc, models_store, cdd_exam, more_exams):
    files = list(cdd_exam) + list(more_exams[0])
    for f in files:
        orthanc.upload(f)
    studies = sorted({_study_of(f) for f in files})
    proc = subprocess.Popen(_command(orthanc, models_store), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=_env())
    try:
        for line in proc.stderr:
            if ": scoring " in line:  # a study's images are being fetched and scored: kill it there
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert sum(len(_results(orthanc, s)[0]) for s in studies) == 0  # nothing committed for the killed study
    rerun = _pacs(orthanc, models_store)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    _one_sr_per_study(orthanc, studies)


def test_pacs_stopped_mid_run_reports_failed_studies_and_a_rerun_completes(orthanc, models_store, cdd_exam,
                                                                          more_exams):
    files = list(cdd_exam) + [f for exam in more_exams for f in exam]
    for f in files:
        orthanc.upload(f)
    studies = sorted({_study_of(f) for f in files})
    proc = subprocess.Popen(_command(orthanc, models_store), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=_env())
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("[1/"):  # the first study is done: the PACS goes away
            orthanc.stop()
    proc.wait(120)
    text = "".join(lines)
    assert proc.returncode == 3, text[-2000:]
    failed = [s for s in studies if f"  {s}: " in text.split("failed studies")[-1]]
    assert len(failed) == 2, text[-2000:]
    assert not [v for v in PATIENT_VALUES if v in text]
    orthanc.start()  # the same storage, fresh ports
    rerun = _pacs(orthanc, models_store)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stderr.count(": already scored: ") == 1 and rerun.stderr.count(": scored: ") == 2
    _one_sr_per_study(orthanc, studies)
