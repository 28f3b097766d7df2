"""Model cards: the card's renderings logged beside its data in the run, and a version's card read back alone.

The card's data is stored once by `registry.models.log_model(card=...)` (``card.json`` inside the model's artifacts,
plus ``model_card/card.json`` in the run, written by training); `log_card` adds the Markdown and HTML renderings
beside it (``model_card/model_card.md``, ``model_card/model_card.html``). `load_card` reads a registered version's
``card.json`` without loading its pipeline.
"""
from __future__ import annotations

import json
from typing import Any, Callable

import mlflow
import mlflow.artifacts
from mlflow.exceptions import MlflowException

from pipeline.errors import ModelNotFoundError
from registry.models import CARD_FILE, _no_download_progress_bar, resolve_version

__all__ = ["log_card", "load_card", "CARD_MD", "CARD_HTML", "MODEL_CARD_PATH"]

CARD_MD, CARD_HTML = "model_card/model_card.md", "model_card/model_card.html"
MODEL_CARD_PATH = f"extra_files/{CARD_FILE}"  # where mlflow keeps log_model's extra file inside the model's artifacts


def log_card(markdown: str, html: str) -> None:
    """Log the card's Markdown and self-contained HTML into the active run (beside model_card/card.json)."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_card needs an active run: call it inside `with training_run(...)`.")
    mlflow.log_text(markdown, CARD_MD)
    mlflow.log_text(html, CARD_HTML)


def load_card(name: str, alias: str | None = "champion", version: int | str | None = None, *,
              read_card: Callable[[Any, str], Any] | None = None) -> Any:
    """The card of `models:/NAME@alias` (or `models:/NAME/version`): the stored card.json as a dict, or
    `read_card(dict, source)` of it; ModelNotFoundError when that version has none (logged before cards)."""
    mv = resolve_version(name, alias, version)
    source = f"{name} version {mv.version} {CARD_FILE}"
    try:
        with _no_download_progress_bar():  # the card is one line of the command's output, not a download
            raw = json.loads(mlflow.artifacts.load_text(f"models:/{name}/{mv.version}/{MODEL_CARD_PATH}"))
    except (MlflowException, OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{name} version {mv.version} has no readable model card ({CARD_FILE} in the "
                                 f"model's artifacts: {exc}); retrain it with `mammoscope train` to get one") from exc
    return read_card(raw, source) if read_card is not None else raw
