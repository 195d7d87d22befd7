"""The pipeline: ingest (observations -> patches), worker (patches -> states, forecasts, alerts) and the
publisher both hand their sends and Redis writes to."""
