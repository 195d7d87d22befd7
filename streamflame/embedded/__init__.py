"""Local, self-contained services for development, tests and the demo.

- `Broker`: the Tansu Kafka-compatible broker (in-memory, or durable on a local S3).
- `RedisServer`: a `redis-server` with a generated config (AOF, auth, TLS optional).
- `LocalBucketServer`: the local S3 endpoint (files) behind a durable broker;
  `MotoServer`: an in-memory one (survives broker restarts only).
- `EmbeddedStack` (in `stack`): broker + redis + topics + supervised ingest/worker
  processes; what `streamflame up` / `streamflame down` drive.

Everything binds 127.0.0.1 on free ports and keeps data and logs under a run
directory.
"""
from streamflame.embedded.broker import Broker, create_topics, find_tansu, kafka_ready
from streamflame.embedded.localbucket import LocalBucketServer
from streamflame.embedded.moto import MotoServer
from streamflame.embedded.process import StartupError, free_port
from streamflame.embedded.redis_server import RedisServer, RedisTLS
from streamflame.embedded.stack import EmbeddedStack, read_run_json

__all__ = [
    "Broker",
    "EmbeddedStack",
    "LocalBucketServer",
    "MotoServer",
    "RedisServer",
    "RedisTLS",
    "StartupError",
    "create_topics",
    "find_tansu",
    "free_port",
    "kafka_ready",
    "read_run_json",
]
