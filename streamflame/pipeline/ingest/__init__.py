"""Ingest: observations topic -> 48-slot patches (see :mod:`streamflame.pipeline.ingest.consumer`)."""
