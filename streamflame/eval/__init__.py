"""Evaluation: metrics, baselines, the file contract scorer and the `streamflame eval` command."""
