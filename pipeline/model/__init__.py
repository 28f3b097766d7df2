"""The model layer: every estimator pickled into or used by a served model (image Pipeline builders, estimators, exam stage)."""
