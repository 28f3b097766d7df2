"""Model cards as run artifacts: `card/card.json` (the data), `card/model_card.md` and `card/model_card.html`."""
from __future__ import annotations

import json
from typing import Any, Mapping

import mlflow

from pipeline.errors import ModelNotFoundError
from registry.models import resolve_version

__all__ = ["log_card", "load_card", "CARD_JSON", "CARD_MD", "CARD_HTML"]

CARD_JSON, CARD_MD, CARD_HTML = "card/card.json", "card/model_card.md", "card/model_card.html"


def log_card(card: Mapping[str, Any], markdown: str, html: str) -> None:
    """Log the card's data and both renderings into the active run."""
    mlflow.log_text(json.dumps(card, indent=1, default=str), CARD_JSON)
    mlflow.log_text(markdown, CARD_MD)
    mlflow.log_text(html, CARD_HTML)


def load_card(name: str, alias: str | None = "champion", version: int | str | None = None) -> dict[str, Any]:
    """The card dict of `models:/NAME@alias` (or version); ModelNotFoundError when that version has none."""
    mv = resolve_version(name, alias, version)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{mv.run_id}/{CARD_JSON}")
    except Exception as exc:  # noqa: BLE001 - mlflow raises several types for a missing artifact
        raise ModelNotFoundError(f"{name} version {mv.version} has no model card ({CARD_JSON} in run "
                                 f"{mv.run_id}); retrain it with `mammoscope train` to get one") from exc
    return json.loads(text)
