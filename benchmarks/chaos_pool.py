"""The pool the chaos suite breaks: every part a separate process on loopback.

Its own redis-server with an AOF (the product's embedded launcher, which restarts on the
same port and password), moto's S3 server behind a :class:`TcpProxy`, a webhook receiver
and an image host, and the product's supervisor running the API, a CPU worker, two GPU
workers (``tiny`` on the CPU) and the beat. Methods here are the faults.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import redis
from botocore.config import Config

from api_shim.cli.supervisor import Supervisor
from scheduler.redis.accounts import Accounts
from scheduler.redis.embedded import EmbeddedRedis, free_port, free_port_block
from scheduler.settings import Settings

from .chaos_net import ImageHost, ProxyMode, TcpProxy, WebhookReceiver

__all__ = ["Timings", "ChaosPool", "GPU_WORKERS", "wait_until", "answers"]

GPU_WORKERS = ("gpu-worker-1", "gpu-worker-2")
_BUCKET = "chaos"
_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # No user's AWS configuration may leak in: everything talks to moto.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


@dataclass(frozen=True)
class Timings:
    """The test-sized ``XSD_*`` timings the pool runs with (stated in every report)."""

    lease_seconds: int = 5
    tick_seconds: float = 0.5
    broker_visibility_timeout: int = 10
    # Longer than any scenario's bound, so a job nobody runs shows as stuck rather than
    # as a refunded provider_timeout.
    job_timeout_seconds: int = 1200
    webhook_backoff_base_seconds: float = 0.3
    webhook_backoff_max_seconds: float = 2.0
    # The outbox: a job the API did not enqueue is sent after the grace; one no worker
    # claimed is sent again after the retry period, then twice as long, and so on.
    dispatch_grace_seconds: float = 2.0
    dispatch_retry_seconds: float = 60.0
    # The product's default: a finished image is retried this long while S3 fails.
    upload_retry_seconds: float = 900.0

    def env(self) -> dict[str, str]:
        """The ``XSD_*`` variables."""
        return {
            "XSD_LEASE_SECONDS": str(self.lease_seconds),
            "XSD_TICK_SECONDS": str(self.tick_seconds),
            "XSD_BROKER_VISIBILITY_TIMEOUT": str(self.broker_visibility_timeout),
            "XSD_JOB_TIMEOUT_SECONDS": str(self.job_timeout_seconds),
            "XSD_WEBHOOK_BACKOFF_BASE_SECONDS": str(self.webhook_backoff_base_seconds),
            "XSD_WEBHOOK_BACKOFF_MAX_SECONDS": str(self.webhook_backoff_max_seconds),
            "XSD_DISPATCH_GRACE_SECONDS": str(self.dispatch_grace_seconds),
            "XSD_DISPATCH_RETRY_SECONDS": str(self.dispatch_retry_seconds),
            "XSD_UPLOAD_RETRY_SECONDS": str(self.upload_retry_seconds),
        }


def wait_until(done: Callable[[], bool], *, timeout: float, interval: float = 0.2) -> bool:
    """Poll ``done`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 right now."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _cpu_ticks(pid: int) -> int:
    """User plus system clock ticks a process has used (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


class ChaosPool:
    """Starts the pool under ``root`` and injects the faults."""

    def __init__(self, root: Path, timings: Timings) -> None:
        self.root = root
        self.timings = timings
        self.redis_server = EmbeddedRedis(root / "redis")
        self.receiver = WebhookReceiver()
        self.image_host = ImageHost()
        self._moto: subprocess.Popen[bytes] | None = None
        self.s3_proxy: TcpProxy | None = None
        self.supervisor: Supervisor | None = None
        self.settings: Settings | None = None
        self._redis: redis.Redis | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> ChaosPool:
        """Start every part; returns once the API and both GPU workers are ready."""
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        redis_url = self.redis_server.start()
        self._start_s3(logs)
        self.receiver.start()
        self.image_host.start()
        assert self.s3_proxy is not None
        env = {
            **_AWS_ENV,
            **self.timings.env(),
            "XSD_ALLOW_PRIVATE_URLS": "1",
            "XSD_STORAGE": "s3",
            "XSD_S3_BUCKET": _BUCKET,
            "XSD_S3_ENDPOINT_URL": self.s3_proxy.url,
            "XSD_API_KEY_PEPPER": "chaos-pepper",
            "XSD_URL_SIGNING_KEY": "chaos-url-signing-key",
            # Two "GPU" workers compute on this machine's CPUs: one torch thread each, or
            # their OpenMP threads spin against each other.
            "OMP_NUM_THREADS": "1",
        }
        self.settings = Settings(
            data_dir=self.root,
            redis_url=redis_url,
            metrics_port=free_port_block(len(GPU_WORKERS) + 2),
            api_key_pepper=env["XSD_API_KEY_PEPPER"],
            url_signing_key=env["XSD_URL_SIGNING_KEY"],
        )
        self.supervisor = Supervisor(
            self.settings,
            host="127.0.0.1",
            port=free_port(),
            env=env,
            log_dir=logs,
            gpu_workers=len(GPU_WORKERS),
        )
        self.supervisor.start(timeout=180)
        for name in GPU_WORKERS:
            self.wait_ready(name)
        return self

    def _start_s3(self, logs: Path) -> None:
        port = free_port()
        with (logs / "moto.log").open("ab") as output:
            self._moto = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                env={**os.environ, **_AWS_ENV},
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        endpoint = f"http://127.0.0.1:{port}"
        if not wait_until(lambda: answers(endpoint), timeout=60):
            raise RuntimeError(f"moto's S3 server did not start; see {logs}/moto.log")
        boto3.session.Session(**_session_args()).client(
            "s3",
            endpoint_url=endpoint,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        ).create_bucket(Bucket=_BUCKET)
        self.s3_proxy = TcpProxy(("127.0.0.1", port)).start()

    def wait_ready(self, name: str, *, timeout: float = 180) -> None:
        """Until the child ``name`` answers /readyz (a GPU worker: its model is loaded)."""
        assert self.supervisor is not None
        url = f"http://127.0.0.1:{self.supervisor.metrics_ports()[name]}/readyz"
        child = self.supervisor.children[name]
        wait_until(lambda: child.poll() is not None or answers(url), timeout=timeout)
        if child.poll() is not None:
            raise RuntimeError(f"{name} exited while starting; see {self.root}/logs")
        if not answers(url):
            raise TimeoutError(f"{name} was not ready within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop everything (the workers first, Redis last)."""
        if self.supervisor is not None:
            for name in GPU_WORKERS:  # a frozen worker cannot obey SIGTERM
                self.signal(name, signal.SIGCONT)
            self.supervisor.stop(grace=15)
        self.redis_server.stop()
        if self._moto is not None:
            self._moto.terminate()
            self._moto.wait(timeout=15)
        if self.s3_proxy is not None:
            self.s3_proxy.close()
        self.receiver.stop()
        self.image_host.stop()

    # -- access ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Where the API answers."""
        assert self.supervisor is not None
        return self.supervisor.base_url

    @property
    def redis_url(self) -> str:
        """The Redis URL every process uses (stable across restarts)."""
        assert self.settings is not None and self.settings.redis_url is not None
        return self.settings.redis_url

    def redis(self) -> redis.Redis:
        """The harness's client (short timeouts: Redis may be down on purpose; it
        reconnects by itself once Redis is back)."""
        if self._redis is None:
            self._redis = redis.Redis.from_url(
                self.redis_url, decode_responses=True, socket_timeout=3, socket_connect_timeout=2
            )
        return self._redis

    def accounts(self) -> Accounts:
        """The accounts store, to create keys and read balances."""
        assert self.settings is not None
        return Accounts(self.redis(), pepper=self.settings.pepper)

    def pid(self, name: str) -> int:
        """Process id of a supervised child."""
        assert self.supervisor is not None
        return self.supervisor.children[name].pid

    # -- faults ----------------------------------------------------------------------

    def signal(self, name: str, signum: int) -> None:
        """Send a signal to a supervised child."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid(name), signum)

    def kill_and_restart(self, name: str, *, down_seconds: float = 0.5) -> None:
        """SIGKILL a child, then start it again."""
        assert self.supervisor is not None
        child = self.supervisor.children[name]
        child.send_signal(signal.SIGKILL)
        child.wait()
        time.sleep(down_seconds)
        self.supervisor.spawn(name)

    def busiest_gpu_worker(self, *, sample_seconds: float = 0.5) -> str:
        """The GPU worker that used the most CPU over a short sample (on this CPU-only
        pool, the one in the middle of a batch)."""
        before = {name: _cpu_ticks(self.pid(name)) for name in GPU_WORKERS}
        time.sleep(sample_seconds)
        used = {name: _cpu_ticks(self.pid(name)) - before[name] for name in GPU_WORKERS}
        return max(used, key=lambda name: used[name])

    def stop_redis(self, *, kill: bool) -> None:
        """Stop Redis: SIGTERM (it flushes its AOF) or SIGKILL (it does not)."""
        if kill and self.redis_server.pid is not None:
            os.kill(self.redis_server.pid, signal.SIGKILL)
        self.redis_server.stop()  # reaps a killed server, or stops a live one

    def start_redis(self) -> None:
        """Start Redis again on the same port, from its AOF."""
        self.redis_server.start()

    def set_s3(self, mode: ProxyMode) -> None:
        """Make S3 refuse, hang, or work again."""
        assert self.s3_proxy is not None
        self.s3_proxy.set_mode(mode)

    def log_text(self, name: str) -> str:
        """A child's whole log."""
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def redis_info(self) -> dict[str, Any]:
        """Redis's persistence section (AOF state), or an error."""
        try:
            return dict(self.redis().info("persistence"))
        except redis.RedisError as exc:
            return {"error": str(exc)}


def _session_args() -> dict[str, str]:
    return {
        "aws_access_key_id": _AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": _AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": _AWS_ENV["AWS_DEFAULT_REGION"],
    }
