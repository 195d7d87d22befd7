"""Real-time alert episodes: per-observation judgement in ingest (see judge.py, episodes.py)."""
