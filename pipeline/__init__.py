"""Orchestration: image reading, dataset adapters, splits, experiments, training, prediction and the CLI."""
