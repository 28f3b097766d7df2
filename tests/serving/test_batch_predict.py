"""`mammoscope predict` end to end: bad inputs among good ones, exit codes, resume after SIGKILL, determinism."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from badinputs import good_mias_images, permission_blocks_reads, write_corpus
from pipeline.serving.batch import EXIT_NOTHING_RAN, EXIT_OK, EXIT_SOME_FAILED, BatchOptions, run_batch
from pipeline.io.batchio import InputItem, ResultWriter, discover_inputs
from pipeline.paths import PROJECT_DIR


@pytest.fixture(scope="module")
def champion(tiny_store):
    """The session's tiny store (conftest `tiny_store`); these tests score with its density champion."""
    return tiny_store


def _predict_cmd(champion, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "predict", *args, "--model", champion.model_uri("density"),
            "--tracking-uri", champion.tracking_uri, "--no-progress"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PROJECT_DIR), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


# -- inputs and output, no model ---------------------------------------------------------------------------------------
def test_discover_walks_folders_once_and_reads_manifests(tmp_path: Path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "B.PNG", "sub/c.dcm", "notes.txt", ".hidden.png", "sub/._d.png"):
        (folder / name).write_bytes(b"x")
    os.symlink("..", folder / "sub" / "up")  # folder loop
    os.symlink(folder / "sub", folder / "alias")  # second link to a folder already walked
    manifest = tmp_path / "list.csv"
    manifest.write_text("file,laterality,view\nin/a.png,l,cc\nin/missing.png,R,MLO\n", encoding="utf-8")

    items = discover_inputs([folder, manifest, folder / "a.png"])
    paths = [Path(i.path).relative_to(tmp_path).as_posix() for i in items]
    assert paths[:3] == ["in/B.PNG", "in/a.png", "in/alias/c.dcm"] or paths[:3] == ["in/B.PNG", "in/a.png", "in/sub/c.dcm"]
    assert len(paths) == len(set(paths)) == 4  # a.png once although listed three times; c.dcm once
    assert paths[-1] == "in/missing.png"
    assert (items[-1].laterality, items[-1].view) == ("R", "MLO")
    only_dicom = discover_inputs([folder], include=["*.dcm"])
    assert [Path(i.path).name for i in only_dicom] == ["c.dcm"]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".json", ".parquet"])
def test_writer_resumes_and_drops_an_unfinished_row(tmp_path: Path, suffix: str):
    out = tmp_path / f"results{suffix}"
    columns = ["path", "p", "error"]
    writer = ResultWriter(out, columns)
    writer.write([{"path": "/x/1.png", "p": 0.25, "error": None}, {"path": "/x/2.png", "p": None, "error": "bad"}])
    journal = writer.journal
    with open(journal, "a", encoding="utf-8") as fh:  # what a SIGKILL in the middle of a write leaves
        fh.write('/x/3.png,0.5' if suffix == ".csv" else '{"path": "/x/3.png", "p"')
    again = ResultWriter(out, columns)
    assert again.done == {"/x/1.png", "/x/2.png"}
    again.write([{"path": "/x/3.png", "p": 0.5, "error": None}])
    again.close()
    rows = ResultWriter(out, columns).all_rows()
    assert [r["path"] for r in rows] == ["/x/1.png", "/x/2.png", "/x/3.png"]
    assert float(rows[0]["p"]) == 0.25 and rows[1]["error"] == "bad"
    if suffix == ".parquet":
        assert list(pd.read_parquet(out)["path"]) == ["/x/1.png", "/x/2.png", "/x/3.png"]
        assert not journal.exists()
    if suffix == ".json":
        assert [r["path"] for r in json.loads(out.read_text())] == ["/x/1.png", "/x/2.png", "/x/3.png"]
    fresh = ResultWriter(out, columns, mode="overwrite")
    assert fresh.done == set()


def test_nothing_to_score_exits_4(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    summary = run_batch(BatchOptions(paths=[str(tmp_path / "empty")], out=str(tmp_path / "r.csv"), progress=False))
    assert summary.exit_code == EXIT_NOTHING_RAN and "no image files" in summary.text()
    assert not (tmp_path / "r.csv").exists()


def test_no_model_exits_4(champion, tmp_path: Path):
    image = good_mias_images(1)[0]
    summary = run_batch(BatchOptions(paths=[str(image)], out=str(tmp_path / "r.csv"), progress=False,
                                     model_uri="models:/mammoscope-no-such-model@champion",
                                     tracking_uri=champion.tracking_uri))
    assert summary.exit_code == EXIT_NOTHING_RAN
    assert "mammoscope-no-such-model" in summary.message and "mammoscope train" in summary.message
    assert not (tmp_path / "r.csv").exists()


# -- with the tiny champion ------------------------------------------------------------------------------------------
def test_folder_of_bad_and_good_images(champion, tmp_path: Path, capsys: pytest.CaptureFixture):
    """All bad inputs + 20 real mammograms: a row each, readable oddities scored, one error row per bad file, exit 3."""
    folder = tmp_path / "archive"
    cases = write_corpus(folder)
    for image in good_mias_images(20):
        (folder / image.name).write_bytes(image.read_bytes())
    locked_blocks = permission_blocks_reads(folder / "locked.png")  # False when run as root
    out = tmp_path / "results.csv"
    from pipeline.cli import main

    code = main(_predict_cmd(champion, str(folder), "--out", str(out), "--batch-size", "8", "--n-jobs", "2")[3:])
    (folder / "locked.png").chmod(0o644)
    stderr = capsys.readouterr().err
    assert code == EXIT_SOME_FAILED, stderr[-3000:]
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 20 + len(cases) and table["path"].is_unique
    by_path = table.set_index("path")
    scored = table[table["error"] == ""]
    expected_errors = [c for c in cases if c.scoring_fails and (c.name != "unreadable" or locked_blocks)]
    assert len(table) - len(scored) == len(expected_errors)
    assert len(scored) >= 20 + sum(not c.scoring_fails for c in cases)
    for case in expected_errors:
        error = by_path.loc[str(folder / case.relpath), "error"]
        assert str(folder / case.relpath) in error and re.search(case.score_match, error), (case.name, error)
    probabilities = scored[["density_p_F", "density_p_G", "density_p_D"]].astype(float).to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    assert set(scored["density_call"]) <= {"F", "G", "D"}
    assert set(scored["density_version"].astype(int)) == {champion.results["density"].model_version}
    assert "modality is CT" in by_path.loc[str(folder / "ct_scan.dcm"), "warnings"]
    assert f"{len(expected_errors)} failed" in stderr and "failures by cause" in stderr


def test_resume_after_sigkill_scores_every_image_once(champion, tmp_path: Path, capsys: pytest.CaptureFixture):
    """A `mammoscope predict` subprocess SIGKILLed after 4 rows; the same command run again (in this process, which
    spares a second interpreter start) resumes: every image exactly once, the killed run's rows kept."""
    folder = tmp_path / "many"
    folder.mkdir()
    from PIL import Image

    for i, image in enumerate(good_mias_images(20) * 2):  # 40 inputs: real mammograms at 256 px (fast to read)
        with Image.open(image) as im:
            im.resize((256, 256)).save(folder / f"img{i:03d}.png")
    out = tmp_path / "results.csv"
    cmd = _predict_cmd(champion, str(folder), "--out", str(out), "--batch-size", "2", "--n-jobs", "1")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_text(encoding="utf-8").count("\n") >= 5:  # header + 4 rows
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    partial = pd.read_csv(out)
    assert 4 <= len(partial) < 40 and partial["path"].is_unique
    from pipeline.cli import main

    capsys.readouterr()
    code = main(cmd[3:])
    stderr = capsys.readouterr().err
    assert code == EXIT_OK, stderr[-3000:]
    final = pd.read_csv(out)
    assert sorted(final["path"]) == sorted(str(p) for p in folder.iterdir())  # every image exactly once
    assert final["error"].isna().all()
    assert f"{len(partial)} already done" in stderr


# -- determinism ------------------------------------------------------------------------------------------------------
def test_training_is_deterministic(champion, tmp_path: Path):
    """The tiny experiment, trained again with the same seed (fresh feature cache): the same metrics and bit-identical
    out-of-fold and final-model predictions."""
    from pipeline.model.estimators import build_pipeline
    from pipeline.training.train import load_task_data, train_experiment
    from tests._tiny_store import tiny_experiment
    import registry

    exp = tiny_experiment("density")
    second = train_experiment(exp, champion.tracking_uri, register=False, cache_dir=tmp_path / "cache-2",
                              progress=lambda line: None)
    first = champion.results["density"]
    assert set(second.metrics) == set(first.metrics)
    for key, value in first.metrics.items():
        assert second.metrics[key] == value or (np.isnan(value) and np.isnan(second.metrics[key])), key
    assert np.array_equal(second.cv.proba, first.cv.proba)
    data = load_task_data(exp.config, lambda line: None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refit = build_pipeline(exp.config, tmp_path / "cache-3").fit(data.X, data.y, classifier__groups=data.groups)
    registry.configure(champion.tracking_uri)
    registered = registry.load_model(champion.names["density"], "champion")
    assert np.array_equal(refit.predict_proba(data.X), registered.pipeline.predict_proba(data.X))


def test_manifest_with_patient_ids_gets_density_per_exam(champion, tmp_path: Path):
    """Both breasts of 3 women + a missing file: `<out>.exams.csv` holds one row per exam, the mean of its images."""
    from pipeline.paths import default_mias_dir

    images = default_mias_dir() / "images"
    rows = [(images / f"mdb{n:03d}.png", f"woman{(n - 1) // 2}") for n in range(1, 7)]
    rows.append((tmp_path / "gone.png", "woman0"))  # listed but missing: an error row, counted, not averaged
    rows.append((tmp_path / "lost.png", "woman3"))  # an exam whose only image fails: kept, with no call
    manifest = tmp_path / "exams.csv"
    pd.DataFrame({"path": [str(p) for p, _ in rows], "patient_id": [e for _, e in rows]}).to_csv(manifest, index=False)
    out = tmp_path / "scores.csv"
    summary = run_batch(BatchOptions(paths=[str(manifest)], out=str(out), model_uri=champion.model_uri("density"),
                                     tracking_uri=champion.tracking_uri, progress=False))
    assert summary.exit_code == EXIT_SOME_FAILED and summary.exams_out == str(tmp_path / "scores.exams.csv")
    assert "density per exam" in summary.text()
    images_table = pd.read_csv(out, keep_default_na=False)
    exams = pd.read_csv(summary.exams_out).set_index("exam")
    assert list(exams.index) == ["woman0", "woman1", "woman2", "woman3"]
    assert exams["n_images"].tolist() == [2, 2, 2, 0] and exams["n_failed"].tolist() == [1, 0, 0, 1]
    columns = ["density_p_F", "density_p_G", "density_p_D"]
    assert exams.loc["woman3", columns].isna().all() and pd.isna(exams.loc["woman3", "density_call"])
    exams = exams.drop(index="woman3")
    scored = images_table[images_table["error"] == ""].copy()
    scored["exam"] = scored["path"].map({str(p): e for p, e in rows})
    expected = scored.groupby("exam")[columns].apply(lambda t: t.astype(float).mean())
    np.testing.assert_allclose(exams[columns].to_numpy(), expected.loc[exams.index].to_numpy(), atol=1e-9)
    assert (exams["density_call"] == [c[len("density_p_"):] for c in exams[columns].idxmax(axis=1)]).all()


def test_folder_without_exam_ids_writes_no_exam_table(tmp_path: Path):
    from types import SimpleNamespace

    from pipeline.serving.batch import ExamFiles, Prepared, exam_of

    assert exam_of(InputItem(path="/x.png")) is None
    assert exam_of(InputItem(path="/x.png", extra={"patient_id": " P1 ", "exam_id": ""})) == "P1"
    assert exam_of(InputItem(path="/x.png", extra={"patient_id": "P1", "exam_id": "E7"})) == "P1|exam:E7"
    assert exam_of(InputItem(path="/x.png", extra={"exam_id": "E7"})) == "E7"
    density = SimpleNamespace(task="density", classes=["F", "G", "D"], name="m", version=1)
    row = {"path": "/x.png", "density_p_F": 0.2, "density_p_G": 0.3, "density_p_D": 0.5, "error": None}
    result = SimpleNamespace(density={"probabilities": {"F": 0.2, "G": 0.3, "D": 0.5}, "call": "D"}, exam=None)
    lone = InputItem(path="/x.png")
    files = ExamFiles(tmp_path / "r.csv", [density], [lone], mode="overwrite")  # no exam ids
    files.add([Prepared(item=lone)], [row], result)
    assert files.density_path is None and not (tmp_path / "r.exams.csv").exists()
    named = InputItem(path="/x.png", extra={"patient_id": "P1"})
    assert ExamFiles(tmp_path / "r.csv", [], [named], mode="overwrite").density_path is None  # no density model
    files = ExamFiles(tmp_path / "r.csv", [density], [named], mode="overwrite")
    assert files.density_path is None  # nothing scored yet
    files.add([Prepared(item=named)], [row], result)
    files.add([Prepared(item=named)], [row], result)  # a resumed exam is not written twice
    out = files.density_path
    assert out == str(tmp_path / "r.exams.csv") and pd.read_csv(out)["density_call"].tolist() == ["D"]


def test_an_exam_scored_image_by_image_still_gets_its_density_row(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """score_exam_unit's fallback (an exam that cannot be scored together) gives no ExamResult: the per-exam file
    still gets the mean of its scored images called by the model's rule, not an empty row marked done."""
    from types import SimpleNamespace

    from pipeline.serving.batch import ExamFiles, Prepared

    density = SimpleNamespace(task="density", classes=["F", "G", "D"], name="m", version=1,
                              card=SimpleNamespace(decision={"rule": "argmax"}), conformal=None)
    item = InputItem(path="/a.png", extra={"patient_id": "P1"})
    rows = [{"path": "/a.png", "density_p_F": 0.6, "density_p_G": 0.3, "density_p_D": 0.1, "error": None},
            {"path": "/b.png", "density_p_F": 0.0, "density_p_G": 0.3, "density_p_D": 0.7, "error": None},
            {"path": "/c.png", "error": "/c.png: unreadable"}]
    files = ExamFiles(tmp_path / "r.csv", [density], [item], mode="overwrite")
    files.add([Prepared(item=item)] * 3, rows, None)
    exams = pd.read_csv(files.density_path)
    np.testing.assert_allclose(exams[["density_p_F", "density_p_G", "density_p_D"]].to_numpy(), [[0.3, 0.3, 0.4]])
    assert exams["density_call"].tolist() == ["D"] and exams["n_images"].tolist() == [2]
    resumed = ExamFiles(tmp_path / "r.csv", [density], [item], mode="resume")  # the exam gained a view since
    with caplog.at_level("WARNING", logger="pipeline.serving.batch"):
        resumed.add([Prepared(item=item)] * 3, rows[:2] + [{**rows[0], "path": "/c.png"}], None)
    assert len(pd.read_csv(files.density_path)) == 1  # no row twice ...
    assert "the exam of /a.png has images the first run did not score" in caplog.text  # ... and the user is told


@pytest.mark.skipif(not (Path(__file__).resolve().parents[3] / "shared" / "data" / "cdd_cesm").is_dir(),
                    reason="needs ../shared/data/cdd_cesm")
def test_batch_mirrors_a_sample_by_the_side_its_exam_key_names():
    """A right breast named only by its file (P263_R_CM_CC.png), or by a manifest's RIGHT, is mirrored as R, as the
    app and training do; the guess from intensities alone mirrors this one differently (the test can fail)."""
    from pipeline.serving.batch import exam_image_of, prepare_item

    path = str(Path(__file__).resolve().parents[3] / "shared" / "data" / "cdd_cesm" / "images" / "P263_R_CM_CC.png")
    spec = [("density", {"size": 64})]
    given = prepare_item(InputItem(path=path, laterality="R"), spec)
    for item in (InputItem(path=path), InputItem(path=path, laterality="RIGHT", extra={"patient_id": "P263"})):
        prepared = prepare_item(item, spec)
        assert prepared.error is None and prepared.laterality == "R" and prepared.meta.laterality == "R"
        np.testing.assert_array_equal(prepared.samples["density"].array, given.samples["density"].array)
    assert exam_image_of(prepared).key.laterality == "R"
    left = prepare_item(InputItem(path=path, laterality="L"), spec)
    assert np.abs(left.samples["density"].array - given.samples["density"].array).max() > 0.1


def test_a_resumed_run_rescores_a_partly_done_exam_whole_and_writes_no_row_twice(champion, tmp_path: Path):
    """Exams are the unit: cut the results after the first exam's first image (as a kill would) and resume: the
    exam is scored again with both its views, its missing image row is added, and the per-exam file keeps one row
    per exam with the same figures as an uninterrupted run."""
    from pipeline.paths import default_mias_dir

    images = default_mias_dir() / "images"
    manifest = tmp_path / "exams.csv"
    pd.DataFrame({"path": [str(images / f"mdb{n:03d}.png") for n in range(1, 5)],
                  "patient_id": ["w0", "w0", "w1", "w1"]}).to_csv(manifest, index=False)
    options = dict(paths=[str(manifest)], model_uri=champion.model_uri("density"),
                   tracking_uri=champion.tracking_uri, progress=False, n_jobs=1)
    whole = run_batch(BatchOptions(out=str(tmp_path / "whole.csv"), **options))
    out = tmp_path / "cut.csv"
    assert run_batch(BatchOptions(out=str(out), **options)).exit_code == EXIT_OK
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:2]))  # header + the first image of w0
    exams_file = tmp_path / "cut.exams.csv"
    exams_file.write_text("".join(exams_file.read_text().splitlines(keepends=True)[:2]))  # w0's row only
    resumed = run_batch(BatchOptions(out=str(out), **options))
    assert resumed.exit_code == EXIT_OK and resumed.skipped == 1 and resumed.this_run == 3
    final, reference = pd.read_csv(out), pd.read_csv(whole.out)
    assert final["path"].is_unique and sorted(final["path"]) == sorted(reference["path"])
    pd.testing.assert_frame_equal(final.set_index("path").sort_index(), reference.set_index("path").sort_index())
    pd.testing.assert_frame_equal(pd.read_csv(exams_file), pd.read_csv(whole.exams_out))
