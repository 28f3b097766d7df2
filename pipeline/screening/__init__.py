"""Screening mode: is there a cancer in this whole image / breast / exam, and where (see docs/screening.md).

Self-contained so the Task registry and the Predictor can slot it in: labels (`labels`), the sample recipe
(`samples`), the estimator (`model`), per-breast / per-exam fusion and evaluation (`evaluate`), the map (`heatmap`).
"""
