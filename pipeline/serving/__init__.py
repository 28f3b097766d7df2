"""Serving: the one Predictor (prepare, score, explain, load) and batch prediction for `mammoscope predict`."""
