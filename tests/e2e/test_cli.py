"""The operator's commands as a newcomer runs them: ``xsd keys create``, ``xsd keys revoke``,
``xsd credits add``, ``xsd up`` (embedded Redis, Ctrl-C), ``xsd generate`` and ``xsd demo``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from scheduler.redis.embedded import free_port, free_port_block

pytestmark = pytest.mark.slow


def xsd(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "api_shim", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def processes_of(data_dir: Path) -> list[int]:
    """Pids of live processes started with this data directory in their environment."""
    marker = f"XSD_DATA_DIR={data_dir}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().split()[2]
        except OSError:
            continue
        if marker in environ.split(b"\0") and state != "Z":
            found.append(int(entry.name))
    return found


def redis_pids(port: str) -> list[int]:
    """Pids of redis-servers on this port (Redis overwrites its environment with its
    process title, so it is found by the address in that title)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"redis-server" in title and f":{port}".encode() in title:
            found.append(int(entry.name))
    return found


def assert_loopback_only(port: int, *, timeout: float = 60) -> None:
    """``port`` answers /healthz on 127.0.0.1 (once its process has started) and refuses
    127.0.0.2: the whole of 127/8 is this host's loopback, so a socket bound to every
    interface would accept both."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
                assert answer.status == 200
                break
        except OSError:
            assert time.monotonic() < deadline, f"nothing answers on 127.0.0.1:{port}"
            time.sleep(0.2)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.2", port), timeout=2).close()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    data_dir = tmp_path / "data"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("XSD_")}
    return {**clean, "XSD_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}


def test_up_generate_and_ctrl_c(env: dict[str, str], tmp_path: Path) -> None:
    data_dir = Path(env["XSD_DATA_DIR"])
    # Keys made before `up` (on a temporary embedded Redis) survive into it: AOF persistence.
    created = xsd("keys", "create", "--account", "acme", "--credits", "30", "--json", env=env)
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert set(key) == {"apiKey", "account", "webhookSecret"} and key["account"] == "acme"
    added = xsd("credits", "add", "--account", "acme", "--amount", "20", env=env)
    assert added.returncode == 0 and "acme: 50 xTokens" in added.stdout
    assert xsd("credits", "add", "--account", "ghost", "--amount", "5", env=env).returncode != 0
    assert processes_of(data_dir) == [], "one-off commands leave nothing running"

    port, metrics = free_port(), free_port_block(3)
    log = tmp_path / "up.log"
    with log.open("w") as output:
        # A file, not a pipe: the children log to the same stdout, and a pipe nobody
        # drains would block them.
        up = subprocess.Popen(
            [sys.executable, "-m", "api_shim", "up", "--host", "127.0.0.1", "--port", str(port)],
            env={**env, "XSD_METRICS_PORT": str(metrics)},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while f"is up at http://127.0.0.1:{port}" not in log.read_text():
            assert up.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert len(processes_of(data_dir)) == 5  # supervisor, api, 2 workers, beat
        redis_port = (data_dir / "redis" / "url").read_text().rsplit(":", 1)[1].split("/")[0]
        assert len(redis_pids(redis_port)) == 1
        second = xsd("up", "--port", str(free_port()), env=env, timeout=60)
        assert second.returncode != 0 and "already runs" in second.stderr
        # Both workers and the beat serve their probes where the API binds, and only there.
        for metrics_port in range(metrics, metrics + 3):
            assert_loopback_only(metrics_port)

        out = tmp_path / "out"
        generated = xsd(
            "generate",
            "A lighthouse at dawn",
            "--out",
            str(out),
            "--api-url",
            f"http://127.0.0.1:{port}",
            "--api-key",
            key["apiKey"],
            "--email",
            "alice@your-product.com",
            "--size",
            "2560x1440",
            env=env,
        )
        assert generated.returncode == 0, generated.stderr
        (saved,) = [Path(p) for p in generated.stdout.split()]
        assert Image.open(saved).size == (2560, 1440)
        assert "succeeded" in generated.stderr, "progress is shown while it runs"
        # Off a terminal: plain lines, the last for the saved image.
        assert "\r" not in generated.stderr
        assert generated.stderr.splitlines()[-1] == f"saved image 1/1: {saved}"
    finally:
        os.killpg(up.pid, signal.SIGINT)
        code = up.wait(timeout=60)
    assert code == 0
    deadline = time.monotonic() + 10
    while processes_of(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(data_dir) == [], "Ctrl-C leaves no process behind"
    assert redis_pids(redis_port) == []


def test_keys_revoke(env: dict[str, str]) -> None:
    """A key is revoked whole or by its id, once; a second revocation says it is gone."""
    keys = [
        json.loads(xsd("keys", "create", "--account", "acme", "--json", env=env).stdout)["apiKey"]
        for _ in range(2)
    ]
    by_key, by_id = keys[0], keys[1][len("xm_live_") : len("xm_live_") + 12]
    revoked = xsd("keys", "revoke", by_key, env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"revoked {by_key[8:20]}"
    assert xsd("keys", "revoke", by_id, env=env).returncode == 0
    again = xsd("keys", "revoke", by_key, env=env)
    assert again.returncode != 0 and "No API key has the id" in again.stderr
    assert processes_of(Path(env["XSD_DATA_DIR"])) == []


def test_account_shares(env: dict[str, str]) -> None:
    """An account's weight and cap are set with its key or later; bad values are refused."""
    made = xsd("keys", "create", "--account", "acme", "--weight", "2", "--json", env=env)
    assert made.returncode == 0, made.stderr
    capped = xsd("accounts", "set", "acme", "--max-in-flight-images", "16", env=env)
    assert capped.stdout.strip() == "acme: weight 2, max in-flight images 16"
    uncapped = xsd("accounts", "set", "acme", "--max-in-flight-images", "0", env=env)
    assert uncapped.stdout.strip() == "acme: weight 2, max in-flight images none"
    bad = xsd("accounts", "set", "acme", "--weight", "-1", env=env)
    assert bad.returncode != 0 and "weight must be a number above 0" in bad.stderr
    ghost = xsd("accounts", "set", "ghost", "--weight", "1", env=env)
    assert ghost.returncode != 0 and "does not exist" in ghost.stderr
    assert xsd("accounts", "set", "acme", env=env).returncode != 0


def test_demo(env: dict[str, str], tmp_path: Path) -> None:
    result = xsd("demo", "--out", str(tmp_path / "demo"), env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (path,) = [Path(p) for p in result.stdout.split()]
    assert path.parent == tmp_path / "demo"
    assert Image.open(path).size == (2048, 2048)
    assert processes_of(Path(env["XSD_DATA_DIR"])) == []


def test_a_gpu_worker_whose_model_cannot_load_exits_before_taking_jobs(
    env: dict[str, str], tmp_path: Path, redis_url: str
) -> None:
    """A worker that cannot run its queue's jobs must not hold them: it exits non-zero,
    saying why, and the waiting message stays in the queue for a worker that can."""
    import redis

    from scheduler.process.worker import EXIT_MODEL_UNAVAILABLE
    from scheduler.stages.celery_app import gpu_queue

    client = redis.Redis.from_url(redis_url)
    queue = gpu_queue("xSD4.5", "2k")
    client.lpush(queue, b'{"body": "a message nobody may take"}')
    broken = {**env, "XSD_REDIS_URL": redis_url, "XSD_MODEL_PATH": str(tmp_path / "no-weights")}
    result = xsd("worker", "--queues", "gpu", env=broken, timeout=120)
    assert result.returncode == EXIT_MODEL_UNAVAILABLE, result.stderr[-3000:]
    assert "the model xSD4.5 could not be loaded" in result.stderr
    assert "model_index.json" in result.stderr, "the reason is named"
    assert client.llen(queue) == 1, "nothing was consumed"


def test_up_says_why_a_worker_could_not_start(env: dict[str, str], tmp_path: Path) -> None:
    broken = {**env, "XSD_MODEL_PATH": str(tmp_path / "no-weights")}
    result = xsd("up", "--port", str(free_port()), env=broken, timeout=180)
    assert result.returncode != 0
    assert "gpu-worker exited with status 78" in result.stderr, result.stderr[-3000:]
    assert processes_of(Path(env["XSD_DATA_DIR"])) == []
