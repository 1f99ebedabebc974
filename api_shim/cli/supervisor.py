"""``xsd up``: the whole service on one machine, as separate real processes.

Redis (embedded unless ``XSD_REDIS_URL`` is set), the API, a CPU-queue worker, a GPU-queue
worker and the beat. Ctrl-C or SIGTERM stops them in order (API and workers first, Redis
last); a child that dies stops the rest. Children also get SIGTERM from the kernel if the
supervisor itself is killed, so nothing is left orphaned.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scheduler import EXIT_MODEL_UNAVAILABLE, EmbeddedRedis, Settings, find_running

__all__ = ["Supervisor", "STOP_GRACE_SECONDS"]

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Supervisor:
    """Starts, watches and stops the processes of a single-machine install."""

    settings: Settings
    host: str
    port: int
    redis: EmbeddedRedis | None = None
    redis_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    # When set, each child writes to <log_dir>/<name>.log instead of this terminal.
    log_dir: Path | None = None
    # More than one runs ``gpu-worker-1``, ``gpu-worker-2``, ... with distinct Celery
    # hostnames (fault-injection runs need two to take over each other's jobs).
    gpu_workers: int = 1
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _stopping: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        """Where the API answers."""
        return f"http://{self.host}:{self.port}"

    def metrics_ports(self) -> dict[str, int]:
        """With ``XSD_METRICS_PORT`` set, each non-API child serves its own metrics on the
        next port up (the API serves ``/metrics`` on its own port)."""
        base = self.settings.metrics_port
        if base is None:
            return {}
        names = [name for name in self.commands() if name != "api"]
        return {name: base + offset for offset, name in enumerate(names)}

    def commands(self) -> dict[str, list[str]]:
        """Each child's ``xsd`` arguments, by name."""
        gpu = {"gpu-worker": "gpu"}
        if self.gpu_workers > 1:
            gpu = {f"gpu-worker-{i}": f"gpu{i}" for i in range(1, self.gpu_workers + 1)}
        return {
            "api": ["api", "--host", self.host, "--port", str(self.port)],
            "cpu-worker": ["worker", "--queues", "cpu", "--hostname", "cpu@%h"],
            **{
                name: ["worker", "--queues", "gpu", "--hostname", f"{host}@%h"]
                for name, host in gpu.items()
            },
            "beat": ["beat"],
        }

    def environment(self, name: str) -> dict[str, str]:
        """The environment a child runs with."""
        assert self.redis_url is not None
        env = dict(os.environ)
        env.update(self.env)
        env.update(
            XSD_REDIS_URL=self.redis_url,
            XSD_DATA_DIR=str(self.settings.data_dir.resolve()),
            XSD_HOST=self.host,
            XSD_PORT=str(self.port),
            XSD_PUBLIC_BASE_URL=self.settings.public_base_url or self.base_url,
            PYTHONUNBUFFERED="1",
        )
        port = self.metrics_ports().get(name)
        if port is None:
            env.pop("XSD_METRICS_PORT", None)
        else:
            env["XSD_METRICS_PORT"] = str(port)
        return env

    def spawn(self, name: str) -> subprocess.Popen[bytes]:
        """Start (or restart) one child by name."""
        command = [sys.executable, "-m", "api_shim", *self.commands()[name]]
        output = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            output = (self.log_dir / f"{name}.log").open("ab")
        try:
            child = subprocess.Popen(
                command,
                env=self.environment(name),
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            if output is not None:
                output.close()  # the child holds its own descriptor
        self.children[name] = child
        log.info("started %s (pid %d)", name, child.pid)
        return child

    def start(self, *, timeout: float = 120.0) -> None:
        """Start everything and wait until the API is ready."""
        redis_url = self.settings.redis_url
        if not redis_url:
            if find_running(self.settings.redis_dir):
                raise RuntimeError(
                    f"An xsd instance already runs on {self.settings.data_dir}; stop it first "
                    "or use another XSD_DATA_DIR."
                )
            self.redis = EmbeddedRedis(self.settings.redis_dir)
            redis_url = self.redis.start()
        self.redis_url = redis_url
        for name in self.commands():
            self.spawn(name)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._check_children()
            except RuntimeError:
                self.stop()
                raise
            try:
                with urllib.request.urlopen(f"{self.base_url}/readyz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"The API did not become ready on {self.base_url} in {timeout:.0f} s.")

    def _check_children(self) -> None:
        for name, child in self.children.items():
            code = child.poll()
            if code is not None:
                raise RuntimeError(f"{name} exited with status {code}{self._why(name, code)}.")

    def _why(self, name: str, code: int) -> str:
        """What a dead child said last (its log's last line, when it logs to a file)."""
        said = ""
        if self.log_dir is not None:
            with contextlib.suppress(OSError):
                lines = (self.log_dir / f"{name}.log").read_text(errors="replace").splitlines()
                said = next((line for line in reversed(lines) if line.strip()), "")
        if said:
            return f": {said}"
        if code == EXIT_MODEL_UNAVAILABLE:
            return ": its model could not be loaded (its output above says why)"
        return ""

    def wait(self, *, on_exit: Callable[[str], None] | None = None) -> int:
        """Block until a stop is requested (0) or a child dies (1)."""
        while not self._stopping.wait(0.5):
            try:
                self._check_children()
            except RuntimeError as exc:
                if on_exit:
                    on_exit(str(exc))
                return 1
        return 0

    def request_stop(self, *_: object) -> None:
        """Signal handler: ask :meth:`wait` to return."""
        self._stopping.set()

    def stop(self, *, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop the children (SIGTERM, then SIGKILL after ``grace``), then Redis."""
        for child in self.children.values():
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for name, child in self.children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", name, grace)
                child.kill()
                child.wait()
        self.children.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
