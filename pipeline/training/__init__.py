"""Training: the experiment's sklearn Pipeline and estimators, group routing, cross-validation, plots, train_experiment."""
