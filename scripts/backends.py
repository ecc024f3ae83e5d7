"""Probe the PostgreSQL and Redis servers the second test pass uses; create its database.

Run with the project's virtualenv (psycopg and redis come with the ``dev`` extra):

    python scripts/backends.py postgres URL      exit 0 when PostgreSQL answers at URL's server
    python scripts/backends.py redis URL         exit 0 when Redis answers PING at URL
    python scripts/backends.py wait SECONDS PG_URL REDIS_URL
                                                 wait until both answer (exit 1 on time-out)
    python scripts/backends.py create-db URL     create URL's database unless it exists
"""

from __future__ import annotations

import sys
import time
from urllib.parse import urlparse, urlunparse

import psycopg
import redis
from psycopg import sql

TIMEOUT = 3


def _maintenance_url(url: str) -> tuple[str, str]:
    """The server's ``postgres`` database, and the database ``url`` names."""
    parsed = urlparse(url.replace("postgresql+psycopg://", "postgresql://", 1))
    name = parsed.path.lstrip("/") or "postgres"
    return urlunparse(parsed._replace(path="/postgres")), name


def postgres_answers(url: str) -> str | None:
    """None when the server accepts a connection, else why not."""
    maintenance, _ = _maintenance_url(url)
    try:
        with psycopg.connect(maintenance, connect_timeout=TIMEOUT) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def redis_answers(url: str) -> str | None:
    try:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT,
                                      socket_connect_timeout=TIMEOUT)
        client.ping()
    except redis.RedisError as exc:
        return str(exc) or type(exc).__name__
    return None


def create_database(url: str) -> None:
    maintenance, name = _maintenance_url(url)
    with psycopg.connect(maintenance, connect_timeout=TIMEOUT, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            print(f"backends: database {name!r} exists")
            return
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        print(f"backends: created database {name!r}")


def wait(seconds: float, pg_url: str, redis_url: str) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        problems = {"PostgreSQL": postgres_answers(pg_url), "Redis": redis_answers(redis_url)}
        down = {name: why for name, why in problems.items() if why}
        if not down:
            return True
        if time.monotonic() >= deadline:
            for name, why in down.items():
                print(f"backends: {name} is not answering: {why}", file=sys.stderr)
            return False
        time.sleep(1)


def main(argv: list[str]) -> int:
    match argv:
        case ["postgres", url]:
            return 0 if postgres_answers(url) is None else 1
        case ["redis", url]:
            return 0 if redis_answers(url) is None else 1
        case ["wait", seconds, pg_url, redis_url]:
            return 0 if wait(float(seconds), pg_url, redis_url) else 1
        case ["create-db", url]:
            create_database(url)
            return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
