"""The supervisor's children: one GPU worker by default, or several with distinct names."""

from __future__ import annotations

from pathlib import Path

from api_shim.cli.supervisor import Supervisor
from scheduler.settings import Settings


def _supervisor(tmp_path: Path, **options: int) -> Supervisor:
    settings = Settings(data_dir=tmp_path, metrics_port=9100)
    return Supervisor(settings, host="127.0.0.1", port=8000, redis_url="redis://x", **options)


def test_one_gpu_worker_by_default(tmp_path: Path) -> None:
    commands = _supervisor(tmp_path).commands()
    assert list(commands) == ["api", "cpu-worker", "gpu-worker", "beat"]
    assert commands["gpu-worker"][-1] == "gpu@%h"


def test_several_gpu_workers_have_their_own_names_hostnames_and_ports(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, gpu_workers=2)
    commands = supervisor.commands()
    assert list(commands) == ["api", "cpu-worker", "gpu-worker-1", "gpu-worker-2", "beat"]
    assert [commands[f"gpu-worker-{i}"][-1] for i in (1, 2)] == ["gpu1@%h", "gpu2@%h"]
    ports = supervisor.metrics_ports()
    assert len(set(ports.values())) == len(ports) == 4
    assert supervisor.environment("gpu-worker-2")["XSD_METRICS_PORT"] == str(ports["gpu-worker-2"])
