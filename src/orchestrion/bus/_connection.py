"""Connecting to the bus's Redis."""

from __future__ import annotations

from typing import Any, TypeAlias

import redis

from orchestrion.config import OrchestrionConfig

RedisClient: TypeAlias = Any
"""A ``redis.Redis`` (bytes answers).  redis-py 8 types every answer as a union of the
synchronous and asynchronous results, which no call site here can use: the bus reads
its answers as the Redis documentation gives them."""


def bus_redis_url(config: OrchestrionConfig) -> str:
    """The bus's Redis: ``bus_redis_url``, else the stack's own Redis on loopback."""
    return config.bus_redis_url or f"redis://127.0.0.1:{config.redis_port}/0"


def connect(config: OrchestrionConfig, *, timeout: float = 5.0) -> RedisClient:
    """A client of the bus's Redis (bytes in, bytes out); it connects on first use."""
    return redis.Redis.from_url(
        bus_redis_url(config), socket_timeout=timeout, socket_connect_timeout=min(timeout, 2.0),
        health_check_interval=30,
    )  # fmt: skip
