"""Orchestration in rooms that read as the data flow: io -> config -> samples -> training -> serving -> cli."""
