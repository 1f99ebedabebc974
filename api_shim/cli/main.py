"""The ``xsd`` command line (see DESIGN.md's operational contract)."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from scheduler import (
    API_KEY_PREFIX,
    Accounts,
    SchedulerError,
    Settings,
    embedded_or_running,
    key_id_of,
)

__all__ = ["main"]


def _settings() -> Settings:
    return Settings()


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@contextmanager
def _accounts(settings: Settings) -> Iterator[Accounts]:
    """The accounts in Redis; a scheduler error inside becomes the command's error."""
    import redis

    try:
        if settings.redis_url:
            yield Accounts(
                redis.Redis.from_url(settings.redis_url, decode_responses=True),
                pepper=settings.pepper,
            )
            return
        with embedded_or_running(settings.redis_dir) as url:
            client = redis.Redis.from_url(url, decode_responses=True)
            yield Accounts(client, pepper=settings.pepper)
    except SchedulerError as exc:
        raise click.ClickException(exc.message) from exc


@click.group()
def main() -> None:
    """xSD 4.5 worker pool."""


@main.command()
@click.option("--host", default=None, help="Interface for the API (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="API port (default 8000).")
def up(host: str | None, port: int | None) -> None:
    """Run everything on this machine until Ctrl-C."""
    from .supervisor import Supervisor

    _logging()
    settings = _settings()
    supervisor = Supervisor(settings, host=host or settings.host, port=port or settings.port)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    try:
        supervisor.start()
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"xSD 4.5 is up at {supervisor.base_url} (Ctrl-C to stop)", err=False)
    code = supervisor.wait(on_exit=lambda why: click.echo(f"stopping: {why}", err=True))
    supervisor.stop()
    sys.exit(code)


@main.command()
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
def api(host: str | None, port: int | None) -> None:
    """Run the HTTP API."""
    import uvicorn

    from scheduler import init

    from ..app import create_app

    _logging()
    settings = _settings()
    runtime = init(settings)
    uvicorn.run(
        create_app(runtime),
        host=host or settings.host,
        port=port or settings.port,
        log_level="info",
        access_log=False,
        timeout_graceful_shutdown=10,
    )


@main.command()
@click.option("--queues", required=True, help="Comma-separated queues; 'gpu' means all GPU queues.")
@click.option("--concurrency", type=int, default=None, help="Threads of a CPU-queue worker.")
@click.option("--hostname", default=None, help="Celery node name.")
def worker(queues: str, concurrency: int | None, hostname: str | None) -> None:
    """Run a Celery worker."""
    from scheduler import run_worker

    _logging()
    run_worker(_settings(), queues=queues, concurrency=concurrency, hostname=hostname)


@main.command()
@click.option("--hostname", required=True, help="Celery node name of the worker to drain.")
def drain(hostname: str) -> None:
    """Make a worker stop taking jobs; what it runs still finishes (preStop hook)."""
    from scheduler import drain as drain_worker

    queues = drain_worker(_settings(), hostname=hostname)
    click.echo(f"{hostname} stopped consuming: {', '.join(queues) or 'nothing (not found)'}")


@main.command()
def beat() -> None:
    """Run the beat (the reaper tick)."""
    from scheduler import run_beat

    _logging()
    run_beat(_settings())


@main.group()
def keys() -> None:
    """API keys."""


_WEIGHT = click.option(
    "--weight",
    type=float,
    default=None,
    help="Share of the GPUs against other accounts with waiting jobs (default 1).",
)
_CAP = click.option(
    "--max-in-flight-images",
    "cap",
    type=int,
    default=None,
    help="Most images of the account generated at once; more wait queued (0: no cap).",
)


@keys.command("create")
@click.option("--account", required=True, help="Account name (created if needed).")
@click.option("--credits", "credits_", type=int, default=None, help="xTokens to add.")
@_WEIGHT
@_CAP
@click.option("--json", "as_json", is_flag=True, help="Print {apiKey, account, webhookSecret}.")
def keys_create(
    account: str, credits_: int | None, weight: float | None, cap: int | None, as_json: bool
) -> None:
    """Create an API key (and the account, if new)."""
    settings = _settings()
    with _accounts(settings) as accounts:
        if weight is not None or cap is not None:
            accounts.ensure(account)
            accounts.set_share(account, weight=weight, max_inflight_images=cap)
        new = accounts.create_key(account)
        if credits_:
            accounts.add_credits(account, credits_)
    if as_json:
        click.echo(
            json.dumps(
                {"apiKey": new.api_key, "account": new.account, "webhookSecret": new.webhook_secret}
            )
        )
    else:
        click.echo(f"account:        {new.account}")
        click.echo(f"api key:        {new.api_key}   (shown once)")
        click.echo(f"webhook secret: {new.webhook_secret}")


@keys.command("revoke")
@click.argument("key")
def keys_revoke(key: str) -> None:
    """Revoke an API key, given whole (xm_live_...) or by its id; it stops working at once."""
    key_id = key_id_of(key) if key.startswith(API_KEY_PREFIX) else key
    with _accounts(_settings()) as accounts:
        revoked = accounts.revoke_key(key_id)
    if not revoked:
        raise click.ClickException(f"No API key has the id {key_id!r}.")
    click.echo(f"revoked {key_id}")


@main.group()
def accounts() -> None:
    """Accounts' shares of the GPUs."""


@accounts.command("set")
@click.argument("account")
@_WEIGHT
@_CAP
def accounts_set(account: str, weight: float | None, cap: int | None) -> None:
    """Set an account's weight and cap on images in flight; queued jobs keep their place."""
    if weight is None and cap is None:
        raise click.UsageError("Give --weight, --max-in-flight-images or both.")
    with _accounts(_settings()) as store:
        share = store.set_share(account, weight=weight, max_inflight_images=cap)
    cap_text = "none" if share.max_inflight_images is None else share.max_inflight_images
    click.echo(f"{account}: weight {share.weight:g}, max in-flight images {cap_text}")


@main.group()
def credits() -> None:
    """Account balances."""


@credits.command("add")
@click.option("--account", required=True)
@click.option("--amount", type=int, required=True, help="xTokens to add.")
def credits_add(account: str, amount: int) -> None:
    """Add xTokens to an account."""
    with _accounts(_settings()) as accounts:
        balance = accounts.add_credits(account, amount)
    click.echo(f"{account}: {balance} xTokens")


@main.command()
@click.argument("prompt")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("."))
@click.option("--api-url", envvar="XSD_API_URL", default="http://127.0.0.1:8000")
@click.option("--api-key", envvar="XSD_API_KEY", required=True)
@click.option("--email", envvar="XSD_END_USER_EMAIL", required=True, help="Your end user's email.")
@click.option("--model", default="xSD4.5")
@click.option("--size", default="2K")
@click.option("--aspect-ratio", default="auto")
@click.option("-n", "n", type=int, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--guidance-scale", type=float, default=None)
@click.option("--reference", "references", multiple=True, help="Reference image URL (repeatable).")
@click.option("--watermark", is_flag=True)
@click.option("--sequential", "max_images", type=int, default=None, help="Frames of a series.")
def generate(
    prompt: str, out_dir: Path, api_url: str, api_key: str, email: str, **options: object
) -> None:
    """Generate images through a running API and save them."""
    from ..client import XsdClient
    from ..exceptions import XsdError
    from .generate import run_generation

    try:
        with XsdClient(api_url, api_key) as client:
            paths = run_generation(client, prompt=prompt, email=email, out_dir=out_dir, **options)
    except XsdError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from exc
    for path in paths:
        click.echo(path)


@main.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo-output"))
def demo(out_dir: Path) -> None:
    """Run the whole path once on the embedded defaults and save an image."""
    from .demo import run_demo

    _logging()
    for path in run_demo(_settings(), out_dir=out_dir):
        click.echo(path)
