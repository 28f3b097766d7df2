"""Model card rendering: Markdown and one self-contained HTML page (plots embedded as base64 PNG) from the card dict.

Input is the plain dict of the model-card contract (`ModelCard.to_dict()`: schema_version, name, task, classes,
decision, dataset, split, metrics {name: {value, low, high}}, subgroups {group: {metric: {...}}}, extra, ...); this
module reads no card class, so it renders any card with those keys (`ModelCard.to_dict()` of
pipeline.config.card). It reads `decision["group_thresholds"]` (pipeline.evaluation.operating state, under the
`group_threshold` rule) and, under `extra`: `reliability` ({"bins": [{"mean_predicted", "observed", "count"}],
"what": str}), `conformal` ({coverage, method, ...}: pipeline.evaluation.conformal state), `limitations` (list of
str), `screening_prevalence_per_1000`, `shortcut_audit` (pipeline.training.audit: {flagged, rule, candidates}).
The card holds every CV metric; the Markdown shows the task's headline ones, the conformal coverage and the
per-group operating point (`SHOWN_SUBGROUP_METRICS` for the subgroups).
"""
from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Mapping, Sequence

__all__ = ["about_models", "render_markdown", "render_html", "card_figures", "per_thousand", "checklist", "INTENDED_USE",
           "SHOWN_SUBGROUP_METRICS"]

#: The per-subgroup figures a rendered card shows (where the task has them); the card's data keeps them all.
SHOWN_SUBGROUP_METRICS = ("n", "roc_auc", "sens_at_target", "spec_at_target", "groupthr_sens", "groupthr_spec",
                          "accuracy", "kappa_quadratic")

INTENDED_USE = {
    "use": "Decision support for a qualified reader of mammograms: a second opinion beside, never instead of, the "
           "radiologist's reading; research and evaluation of the method on data like its training data.",
    "non_use": "Not a diagnosis and not for use without a reader; not for patients or populations unlike the "
               "training data (other scanners, sites, countries, contrast-enhanced or synthetic images) until "
               "validated there; not for images without a breast; malignancy scores need a region around a "
               "finding unless the model was trained on whole images.",
}
DEFAULT_SCREENING_PREVALENCE = 6.0  # cancers per 1,000 screens: a typical screening programme's detection rate


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _ci(entry: Mapping[str, Any]) -> str:
    value, low, high = entry.get("value"), entry.get("low"), entry.get("high")
    ok = all(isinstance(v, (int, float)) and not math.isnan(v) for v in (low, high))
    return _num(value) + (f" [{low:.3f}, {high:.3f}]" if ok else "")


def per_thousand(sens: float, spec: float, prevalence_per_1000: float) -> dict[str, float]:
    """Expected counts per 1,000 screens at a sensitivity/specificity and prevalence: found, missed, false alarms."""
    cancers = prevalence_per_1000
    return {"cancers": cancers, "found": cancers * sens, "missed": cancers * (1 - sens),
            "false_alarms": (1000 - cancers) * (1 - spec)}


def _value(metrics: Mapping[str, Any], key: str) -> float | None:
    entry = metrics.get(key)
    return None if not entry else entry.get("value")


def checklist(card: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(guideline item, card section, covered) rows: what of CLAIM / TRIPOD+AI this card reports, by item topic."""
    ds, metrics = card.get("dataset") or {}, card.get("metrics") or {}
    return [
        ("TRIPOD+AI 3b / CLAIM intended use: target population, care pathway, users", "Intended use", True),
        ("TRIPOD+AI 5a / CLAIM data sources", "Data", bool(ds.get("adapter") or ds.get("path"))),
        ("TRIPOD+AI 6b / CLAIM eligibility: which images and labels were used", "Data",
         bool(ds.get("class_counts"))),
        ("TRIPOD+AI sample size / CLAIM number of patients and images", "Data", ds.get("n_patients") is not None),
        ("TRIPOD+AI data splitting / CLAIM partitions, patient-level, no leakage", "Split",
         bool(card.get("split"))),
        ("TRIPOD+AI performance measures with CIs / CLAIM metrics and their uncertainty", "Metrics", bool(metrics)),
        ("TRIPOD+AI calibration / CLAIM calibration", "Reliability",
         "cv_ece" in metrics or bool((card.get("extra") or {}).get("reliability"))),
        ("TRIPOD+AI fairness and subgroups / CLAIM subgroup performance", "Subgroups",
         bool(card.get("subgroups"))),
        ("TRIPOD+AI clinical use: thresholds and their consequences", "Operating points",
         bool(card.get("decision"))),
        ("TRIPOD+AI / CLAIM limitations", "Known limitations", True),
        ("TRIPOD+AI external validation / CLAIM external test set", "-", False),
        ("CLAIM comparison with readers / clinical benefit", "-", False),
    ]


def _limitations(card: Mapping[str, Any]) -> list[str]:
    ds = card.get("dataset") or {}
    out = list((card.get("extra") or {}).get("limitations") or [])
    n = ds.get("n_samples")
    if isinstance(n, int) and n < 1000:
        out.append(f"Small data ({n} samples): confidence intervals are wide; differences inside them are noise.")
    out.append("Internal validation only (patient-level cross-validation on one dataset); no external test set.")
    if not ds.get("density_counts"):
        out.append("No density labels: no dense / non-dense figures, and per-group thresholds cannot be set.")
    views = ds.get("views") or {}
    if len(views) == 1:
        out.append(f"One view only ({next(iter(views))}); other views are untested.")
    task = _task(card)
    if task is not None and not task.whole_breast:
        out.append(f"{task.name.capitalize()} metrics are per finding with its region given, not per screening exam.")
    return out


def _task(card: Mapping[str, Any]) -> Any:
    """The card's registered Task, None for a task this installation does not know."""
    from pipeline.config.tasks import TASKS

    return TASKS.get(str(card.get("task")))


def _shown_metrics(card: Mapping[str, Any]) -> dict[str, Any]:
    """The card's metrics the Markdown lists: the task's headline (non-subgroup) keys, the conformal coverage and set
    size, the per-group operating point; every metric for a task this installation does not know."""
    metrics = card.get("metrics") or {}
    task = _task(card)
    if task is None:
        return dict(metrics)
    keys = [k for k in task.headline_keys if not k.startswith(("dense_", "nondense_"))]
    keys += [k for k in metrics if k.startswith(("conformal_coverage", "conformal_mean", "cv_groupthr_s"))
             and "nominal" not in k]
    return {k: metrics[k] for k in dict.fromkeys(keys) if k in metrics}


def _sections(card: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(title, Markdown lines) per section."""
    ds, split, metrics = card.get("dataset") or {}, card.get("split") or {}, card.get("metrics") or {}
    extra, decision = card.get("extra") or {}, card.get("decision") or {}
    out: list[tuple[str, list[str]]] = []
    out.append(("Intended use", [f"- **Use**: {INTENDED_USE['use']}", f"- **Not for**: {INTENDED_USE['non_use']}"]))
    lines = [f"- Dataset: {ds.get('adapter') or 'n/a'} at `{ds.get('path') or 'n/a'}`, digest `{ds.get('digest')}`",
             f"- {ds.get('n_samples')} samples, {ds.get('n_patients')} patients, {ds.get('n_exams')} exams"]
    for what, key in (("Per class", "class_counts"), ("Per density group", "density_counts"), ("Views", "views")):
        counts = ds.get(key)
        lines.append(f"- {what}: " + (", ".join(f"{k} {v}" for k, v in counts.items()) if counts else "not known"))
    copies = ds.get("export_copies")
    if copies:  # pipeline.training.copies
        lines.append(f"- Export copies: {copies.get('n')} training images also as {copies.get('long_side')} px, 8-bit "
                     f"JPEG (quality {copies.get('jpeg_quality')}) re-exports, training the models only: calibration, "
                     "operating points and every metric are the original images'")
    out.append(("Data", lines))
    out.append(("Split protocol", [
        f"- {split.get('protocol', 'n/a')}, {split.get('folds', 'n/a')} folds, seed {split.get('seed', 'n/a')}; "
        "calibration, operating points and conformal sets are chosen on held-out patients inside each training "
        "fold, never on its test fold."]))
    rows = ["| metric | value [95% CI] |", "|---|---|"] + [f"| {k} | {_ci(v)} |"
                                                       for k, v in _shown_metrics(card).items()]
    out.append(("Headline metrics (out-of-fold)", rows))
    groups = {g: {m: v for m, v in entries.items() if m in SHOWN_SUBGROUP_METRICS}
              for g, entries in (card.get("subgroups") or {}).items()}
    groups = {g: entries for g, entries in groups.items() if entries}
    if groups:
        names = [m for m in SHOWN_SUBGROUP_METRICS if any(m in g for g in groups.values())]
        rows = ["| metric | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
        rows += [f"| {m} | " + " | ".join(_ci(g[m]) if m in g else "-" for g in groups.values()) + " |"
                 for m in names]
        out.append(("Subgroups", rows))
    out.append(("Reliability", [f"- {extra['reliability'].get('what', 'reliability diagram')} (figure in the HTML "
                                "card); ECE " + _ci(metrics.get("cv_ece", {}))] if extra.get("reliability") else
                               ["- no reliability data in this card"]))
    out.append(("Operating points", _operating_lines(card, decision, metrics, extra)))
    if extra.get("shortcut_audit"):
        out.append(("Shortcut audit", _audit_lines(extra["shortcut_audit"])))
    out.append(("Known limitations", [f"- {x}" for x in _limitations(card)]))
    out.append(("Reporting checklist (CLAIM / TRIPOD+AI, by item topic)",
                [f"- [{'x' if ok else ' '}] {item} ({where})" for item, where, ok in checklist(card)]))
    return out


def _audit_lines(audit: Mapping[str, Any]) -> list[str]:
    """The shortcut audit (pipeline.training.audit): the verdict, then one table row per candidate."""
    flagged = list(audit.get("flagged") or [])
    cands = list(audit.get("candidates") or [])
    tested = [c for c in cands if not c.get("skipped")]
    head = (f"- **Warning**: {', '.join(flagged)} {'predicts' if len(flagged) == 1 else 'predict'} the label by "
            "itself: a model can learn it instead of the image; check how the data were collected and exported "
            "before trusting the figures"
            if flagged else f"- None of {len(tested)} tested candidates predicts the label beyond chance")
    lines = [head, f"- Rule: {audit.get('rule', 'n/a')}"]
    skipped = [f"{c.get('name')} ({c['skipped']})" for c in cands if c.get("skipped")]
    if skipped:
        lines.append("- Not tested: " + ", ".join(skipped))
    if tested:
        lines += ["| candidate | out-of-fold ROC AUC [95% CI] | verdict |", "|---|---|---|"]
        lines += [f"| {c.get('name')} ({c.get('what', '')}) | "
                  f"{_ci({'value': c.get('roc_auc'), 'low': c.get('ci_low'), 'high': c.get('ci_high')})} | "
                  f"{'FLAGGED' if c.get('flagged') else 'ok'} |" for c in tested]
    return lines


def _operating_lines(card: Mapping[str, Any], decision: Mapping[str, Any], metrics: Mapping[str, Any],
                     extra: Mapping[str, Any]) -> list[str]:
    lines = []
    rule = decision.get("rule")
    if decision.get("threshold") is not None:
        target = decision.get("target_sensitivity")
        lines.append(f"- {'Pooled' if decision.get('group_thresholds') else 'Single'} threshold "
                     f"{decision['threshold']:.3f} on P({(card.get('classes') or ['', 'pos'])[1]})"
                     + (f", chosen for {target:.0%} sensitivity" if target else ""))
        prevalence = float(extra.get("screening_prevalence_per_1000") or DEFAULT_SCREENING_PREVALENCE)
        for label, sens_key, spec_key in (("single threshold", "cv_sens_at_target", "cv_spec_at_target"),
                                          ("per-group thresholds", "cv_groupthr_sens", "cv_groupthr_spec")):
            sens, spec = _value(metrics, sens_key), _value(metrics, spec_key)
            if sens is None or spec is None or math.isnan(sens) or math.isnan(spec):
                continue
            k = per_thousand(sens, spec, prevalence)
            lines.append(f"- Per 1,000 screens at {prevalence:g} cancers per 1,000 ({label}, CV sensitivity "
                         f"{sens:.2f}, specificity {spec:.2f}): {k['found']:.1f} found, {k['missed']:.1f} missed, "
                         f"{k['false_alarms']:.0f} false alarms (recalls of healthy women)")
    elif decision.get("cutpoints"):
        classes = [str(c) for c in card.get("classes") or []]
        floor = decision.get("min_recall")
        lines.append(f"- Ordinal call: cut-points {', '.join(f'{c:.2f}' for c in decision['cutpoints'])} on the "
                     f"expected class index, fitted for quadratic kappa on held-out probabilities of the training "
                     f"data" + (f"; {classes[0]} and {classes[-1]} each kept at recall >= {floor:.2f} there"
                        if floor is not None and len(classes) > 1 else ""))
    elif rule:
        lines.append(f"- Decision rule: {rule}")
    groups = (decision.get("group_thresholds") or {}).get("groups") or {}
    for name, entry in groups.items():
        lines.append(f"- {name}: threshold {entry['threshold']:.3f} ({entry['reason']})")
    conf = extra.get("conformal") or {}
    if conf.get("coverage"):
        cov = metrics.get("conformal_coverage") or {}
        lines.append(f"- Prediction sets at {conf['coverage']:.0%} nominal coverage ({conf.get('method', '')}); "
                     f"CV coverage {_ci(cov) if cov else 'n/a'}, mean set size "
                     f"{_num(_value(metrics, 'conformal_mean_set_size'), 2)}")
    return lines or ["- none stored"]


def _header(card: Mapping[str, Any]) -> list[str]:
    return [f"Task **{card.get('task')}**, classes {', '.join(map(str, card.get('classes') or []))}"
            f"{' (ordinal)' if card.get('ordinal') else ''}. Code {card.get('code_version')}, created "
            f"{card.get('created')}, MLflow run `{card.get('run_id')}`, card schema {card.get('schema_version')}."]


def render_markdown(card: Mapping[str, Any]) -> str:
    """The card as Markdown (no images: the HTML card holds the plots)."""
    parts = [f"# Model card: {card.get('name')}", "", *_header(card)]
    for title, lines in _sections(card):
        parts += ["", f"## {title}", *lines]
    return "\n".join(parts) + "\n"


def card_figures(card: Mapping[str, Any]) -> dict[str, bytes]:
    """PNG bytes of the reliability diagram and the subgroup figure, from the card's data (where present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, bytes] = {}
    rel = (card.get("extra") or {}).get("reliability") or {}
    bins = [b for b in rel.get("bins") or [] if b.get("count")]
    if bins:
        fig, ax = plt.subplots(figsize=(3.2, 3.0), dpi=90)
        ax.plot([0, 1], [0, 1], "k:", lw=1, label="perfect")
        ax.plot([b["mean_predicted"] for b in bins], [b["observed"] for b in bins], "o-", label="model")
        ax.set(xlabel="predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
               title=rel.get("what", "Reliability")[:40])
        ax.legend(loc="upper left", fontsize=7)
        out["reliability"] = _png(fig, plt)
    groups = card.get("subgroups") or {}
    metric = next((m for m in ("sens_at_target", "roc_auc", "accuracy", "kappa_quadratic")
                   if any(m in g for g in groups.values())), None)
    if metric:
        names = [g for g in groups if metric in groups[g]]
        vals = [groups[g][metric] for g in names]
        fig, ax = plt.subplots(figsize=(3.2, 3.0), dpi=90)
        v = [e.get("value") or 0.0 for e in vals]
        err = [[max(0.0, x - (e.get("low") if e.get("low") is not None else x)) for x, e in zip(v, vals)],
               [max(0.0, (e.get("high") if e.get("high") is not None else x) - x) for x, e in zip(v, vals)]]
        err = [[0.0 if math.isnan(a) else a for a in row] for row in err]
        ax.bar(names, v, yerr=err, capsize=4, color="#6a8caf")
        ax.set(ylim=(0, 1), title=f"{metric} by subgroup (95% CI)")
        out["subgroups"] = _png(fig, plt)
    return out


def _png(fig: Any, plt: Any) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _inline(text: str) -> str:
    """Markdown inline (**bold**, `code`) to HTML, escaped."""
    import re

    s = html.escape(text)
    s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", s)


def _html_block(lines: Sequence[str]) -> str:
    """A section's lines as HTML: a Markdown table, a list, or a list followed by a table (each run its own)."""
    split = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if split:  # list lines, then a table
        return _html_block(lines[:split]) + _html_block(lines[split:])
    if lines and lines[0].startswith("|"):
        rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines if not line.startswith("|---")]
        head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
        return f"<table><tr>{head}</tr>{body}</table>"
    items = []
    for line in lines:
        text = line[2:] if line.startswith("- ") else line
        if text.startswith("[x] ") or text.startswith("[ ] "):
            text = ("☑ " if text[1] == "x" else "☐ ") + text[4:]
        items.append(f"<li>{_inline(text)}</li>")
    return f"<ul>{''.join(items)}</ul>"


def render_html(card: Mapping[str, Any], figures: Mapping[str, bytes] | None = None) -> str:
    """One self-contained HTML page (inline CSS, plots as base64 PNG data URIs; nothing fetched), printable on two
    A4 pages. `figures` defaults to `card_figures(card)`."""
    figures = card_figures(card) if figures is None else figures
    title = f"Model card: {card.get('name')}"
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{_inline(_header(card)[0])}</p>"]
    for name, lines in _sections(card):
        body.append(f"<h2>{html.escape(name)}</h2>{_html_block(lines)}")
        if name == "Reliability" and figures:
            body.append("<div class='figs'>" + "".join(
                f"<img alt='{k}' src='data:image/png;base64,{base64.b64encode(v).decode()}'>"
                for k, v in figures.items()) + "</div>")
    css = ("body{font:10pt/1.3 sans-serif;max-width:18cm;margin:1cm auto}h1{font-size:15pt;margin:0 0 4pt}"
           "h2{font-size:11pt;margin:8pt 0 2pt;border-bottom:1px solid #ccc}ul{margin:2pt 0;padding-left:16pt}"
           "table{border-collapse:collapse;font-size:8.5pt}td,th{border:1px solid #ddd;padding:1pt 4pt}"
           ".figs img{width:7.5cm;margin-right:4pt}@page{size:A4;margin:1cm}")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{css}</style></head><body>{''.join(body)}</body></html>\n")


def about_models(models: Mapping[str, Any]) -> str:
    """Markdown of the loaded models' cards ({task: Predictor or anything with a `card`: a ModelCard or its dict}) for
    the app's "About this model"; a model without a card says so."""
    parts = []
    for task, loaded in models.items():
        card = getattr(loaded, "card", None)
        card = card.to_dict() if hasattr(card, "to_dict") else card
        if not isinstance(card, Mapping):
            parts.append(f"### {task}: no model card")
            continue
        parts.append(render_markdown(card).replace("# Model card", "### Model card", 1).replace("\n## ", "\n#### "))
    return "\n\n".join(parts) or "No model loaded."
