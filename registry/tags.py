"""Names of the tags Mammoscope writes on runs and model versions: one place, read by champion.py and the CLI."""
from __future__ import annotations

PREFIX = "mammoscope."

# run tags
GIT_COMMIT = "mammoscope.git_commit"
GIT_DIRTY = "mammoscope.git_dirty"
VERSION_PREFIX = "version."  # version.numpy, version.sklearn, ...
DATA_DIGEST = "mammoscope.data_digest"  # also on model versions

# model-version tags
TASK = "mammoscope.task"
SELECTION_METRIC = "mammoscope.selection_metric"
SELECTION_VALUE = "mammoscope.selection_value"
HIGHER_IS_BETTER = "mammoscope.higher_is_better"
METRIC_PREFIX = "metric."  # headline metrics: metric.roc_auc, metric.kappa_quadratic, ...
CHAMPION_RULE = "mammoscope.champion_rule"
CHAMPION_DECISION = "mammoscope.champion_decision"
COMPARED_VERSION = "mammoscope.compared_to_version"
COMPARED_VALUE = "mammoscope.compared_to_value"
PROMOTED_BY = "mammoscope.promoted_by"
