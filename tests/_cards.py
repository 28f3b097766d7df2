"""Small model cards for tests that stand in a fitted pipeline for a registered model."""
from __future__ import annotations

from pipeline.config.card import ModelCard
from pipeline.config.tasks import get_task


def card(task: str, classes: list[str], threshold: float | None = None, size: int = 32, **extra) -> ModelCard:
    """A minimal valid card of `task` with `classes`, the task's decision rule (threshold where it has one)."""
    spec = get_task(task)
    decision = {"rule": spec.decision_rule, "threshold": threshold,
                "target_sensitivity": 0.95 if spec.uses_threshold else None}
    return ModelCard(name=f"m-{task}", task=task, classes=list(classes), ordinal=spec.ordinal, decision=decision,
                     sample_params={"size": size, **extra})
