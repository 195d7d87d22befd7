"""Redis connections from config: the one place that builds a redis-py client."""
from __future__ import annotations

from typing import Any


def connect(settings, **overrides: Any):
    """A binary-safe client for ``settings`` (:class:`streamflame.config.RedisSettings`):
    ``redis.cluster.RedisCluster`` when ``settings.cluster``, else ``redis.Redis``.
    ACL user/password and TLS files come from the settings; ``overrides`` go to
    the client constructor last (e.g. ``socket_timeout``)."""
    import redis
    from redis.cluster import RedisCluster

    kw = settings.client_kwargs()
    url = kw.pop("url")
    kw.setdefault("health_check_interval", 30)
    kw.update(overrides)
    cls = RedisCluster if settings.cluster else redis.Redis
    return cls.from_url(url, **kw)
