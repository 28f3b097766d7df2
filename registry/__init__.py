"""The one door to MLflow: tracking runs, artifacts, registered model versions and the champion alias."""
