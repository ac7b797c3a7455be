"""A broker that needs no set-up: use the configured Redis, or start a private one.

``farm demo`` must work on a machine where nobody configured anything. If the
configured Redis answers, it is used; if it is a local address and nothing
answers, a throw-away ``redis-server`` (no persistence) is started on that
port for the duration of the command and stopped afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import redis

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class BrokerError(RuntimeError):
    """The broker is unreachable and cannot be started; the message names the fix."""


def answers(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


@contextmanager
def local_redis(url: str) -> Iterator[bool]:
    """Make sure Redis at ``url`` answers; yields True when this started it."""
    if answers(url):
        yield False
        return
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.hostname not in LOCAL_HOSTS:
        raise BrokerError(f"the broker at {url} does not answer: start it or fix broker_url")
    server = shutil.which("redis-server")
    if server is None:
        raise BrokerError(
            f"nothing answers at {url} and redis-server is not installed: "
            "`apt-get install redis-server`"
        )
    port = parts.port or 6379
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not answers(url, 0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BrokerError(f"could not start redis-server on port {port}")
            time.sleep(0.1)
        yield True
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def known_task_ids(url: str, queues: list[str]) -> set[str]:
    """Task ids the Redis broker holds: waiting in ``queues`` or delivered but unacked.

    The scheduler asks this once at start, for batches a crashed predecessor
    committed but may never have sent (kombu's Redis transport keeps waiting
    messages in a list per queue and delivered ones in the ``unacked`` hash).
    """
    client = redis.Redis.from_url(url)
    ids: set[str] = set()
    raw: list[bytes] = []
    for queue in queues:
        raw += client.lrange(queue, 0, -1)
    raw += client.hvals("unacked")
    for item in raw:
        try:
            data = json.loads(item)
        except ValueError:
            continue
        message = data[0] if isinstance(data, list) and data else data
        if isinstance(message, dict):
            task_id = (message.get("headers") or {}).get("id")
            if task_id:
                ids.add(str(task_id))
    return ids
