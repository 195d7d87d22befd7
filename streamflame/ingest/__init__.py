"""Ingest: observations topic -> 48-slot patches (see :mod:`streamflame.ingest.consumer`)."""
