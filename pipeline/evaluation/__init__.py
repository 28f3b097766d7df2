"""Honest evaluation's arithmetic: patient-level splits, operating points, metrics with bootstrap CIs."""
