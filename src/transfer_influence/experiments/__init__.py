"""Experiments built on runs: the offline demo, the drill-down to single source images, and
pruning (retraining without chosen source classes)."""
