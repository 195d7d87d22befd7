"""The model worker: patches -> states (Redis) -> forecasts and alerts (Kafka). See worker.py."""
