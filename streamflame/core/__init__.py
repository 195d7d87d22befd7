"""The bottom layer: constants, time and frequency helpers, logging. Imports nothing else of streamflame."""
