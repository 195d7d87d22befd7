"""Adapters: the clients of the services outside (Kafka: kafka_io; Redis: state). Below the pipeline,
above messages and config."""
