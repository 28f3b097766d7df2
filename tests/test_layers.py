"""The import graph has no upward arrow: each pipeline room imports only rooms below it (or itself).

Layers, lowest first (docs/architecture.md draws them):
  0 ground    pipeline.errors, pipeline.paths           imported by everyone, registry/ included
  1 compute   pipeline.compute                          Dask / joblib backend
  1 io        pipeline.io                               files, DICOM, dataset tables, batch inputs/outputs
  1 evaluation pipeline.evaluation                      splits, metrics (pure arithmetic)
  2 config    pipeline.config                           experiment schema, task registry, model card
  3 samples   pipeline.samples                          a table row / an image -> a working-resolution sample
  4 model     pipeline.model                            what a served model is: Pipeline builders, estimators, the exam
  5 training  pipeline.training                         CV, plots, streaming, train_experiment (fits pipeline.model)
  5 serving   pipeline.serving                          Predictor, batch prediction (scores pipeline.model)
  6 app       gradio_app, app_support                   the Gradio app
  7 cli       pipeline.cli, pipeline.commands           the `mammoscope` command
Training and serving are siblings on one layer: neither imports the other, and the app does not import training.
registry/ may import only the ground floor of pipeline; features/ and cnn/ import nothing of pipeline.
Imports inside functions count too (a lazy import is still an arrow).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {
    "pipeline.errors": 0, "pipeline.paths": 0,
    "pipeline.compute": 1, "pipeline.io": 1, "pipeline.evaluation": 1,
    "pipeline.config": 2,
    "pipeline.samples": 3,
    "pipeline.model": 4,
    "pipeline.training": 5, "pipeline.serving": 5,
    "app": 6,  # gradio_app and app_support, one room beside each other
    "pipeline.cli": 7, "pipeline.commands": 7,
}


def room(module: str) -> str | None:
    """The room (LAYERS key) a dotted module name belongs to, None outside them."""
    if module.split(".")[0] in ("gradio_app", "app_support"):
        return "app"
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement, relative ones resolved."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names if room(f"{base}.{a.name}") != room(base)]
    return out


def project_files() -> list[Path]:
    files = [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "registry").rglob("*.py"), *(ROOT / "features").rglob("*.py"),
             *(ROOT / "cnn").rglob("*.py"), ROOT / "gradio_app.py", ROOT / "app_support.py"]
    return sorted(files)


def arrows() -> list[str]:
    """Every import that breaks the rule, as 'file:line: importer -> imported'."""
    bad = []
    for path in project_files():
        me = module_name(path)
        top = me.split(".")[0]
        mine = room(me)
        for line, target in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line}: {me} -> {target}"
            if top in ("features", "cnn"):
                if target.split(".")[0] in ("pipeline", "registry", "gradio_app", "app_support"):
                    bad.append(where)
                continue
            theirs = room(target)
            if top == "registry":
                if target.split(".")[0] in ("pipeline", "gradio_app", "app_support") and LAYERS.get(theirs) != 0:
                    bad.append(where)
                continue
            if mine is None:
                if target.split(".")[0] == "pipeline" and theirs is None and target != "pipeline":
                    bad.append(f"{where} (module in no room)")
                continue
            if theirs is None or theirs == mine:
                if target.startswith("pipeline.") and theirs is None:
                    bad.append(f"{where} (module in no room)")
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                bad.append(f"{where} ({theirs} is not below {mine})")
    return bad


def test_every_pipeline_module_lives_in_a_room():
    homeless = [module_name(p) for p in (ROOT / "pipeline").rglob("*.py")
                if room(module_name(p)) is None and module_name(p) != "pipeline"]
    assert homeless == []


def test_the_import_graph_has_no_upward_arrow():
    assert arrows() == []


def test_the_rule_catches_an_upward_arrow(tmp_path, monkeypatch):
    """The checker itself: an io module importing training is reported."""
    assert room("pipeline.io.imageio") == "pipeline.io" and room("pipeline.model.estimators") == "pipeline.model"
    fake = ROOT / "pipeline" / "io" / "imageio.py"
    original = imports_of
    monkeypatch.setitem(globals(), "imports_of",
                        lambda p: [*original(p), (1, "pipeline.model.estimators")] if p == fake else original(p))
    assert any("pipeline.io.imageio -> pipeline.model.estimators" in a for a in arrows())


def test_serving_and_the_app_never_import_training():
    """What is served lives in pipeline.model; serving, the app (and so PACS and batch) reach training nowhere."""
    served = [*(ROOT / "pipeline" / "serving").rglob("*.py"), ROOT / "gradio_app.py", ROOT / "app_support.py"]
    bad = [f"{p.relative_to(ROOT)}:{line}: {target}" for p in served for line, target in imports_of(p)
           if room(target) == "pipeline.training"]
    assert bad == []


def test_the_rule_catches_serving_importing_training(monkeypatch):
    fake = ROOT / "pipeline" / "serving" / "predict.py"
    original = imports_of
    monkeypatch.setitem(globals(), "imports_of",
                        lambda p: [*original(p), (1, "pipeline.training.levels")] if p == fake else original(p))
    assert any("pipeline.serving.predict -> pipeline.training.levels" in a for a in arrows())


def test_every_package_says_in_one_line_what_it_holds():
    for init in [*(ROOT / "pipeline").rglob("__init__.py"), ROOT / "registry" / "__init__.py",
                 ROOT / "features" / "__init__.py", ROOT / "cnn" / "__init__.py"]:
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and doc.splitlines()[0].strip(), init
