"""`facecli serve`: run the OpenCV-FR-compatible REST API over the embedded engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import typer

from facecli.cli import common
from facecli.cli.console import err, safe_text
from facecli.config import Settings
from facecli.errors import ConfigError, TargetError

HELP = """Serve a gallery over HTTP with the OpenCV Face Recognition Server API (PUT /persons, POST /face-search, ...).

Detection and embedding run on the server with the same models as `facecli check`; the data is
the embedded engine's SQLite file (--db), which local commands can keep using. Clients send the key
in the x-api-key header; keys come from FACECLI_SERVER_API_KEYS (comma-separated) and/or
--api-key-file (one per line). Without keys the server refuses to start, unless --no-auth on a
loopback address. API description at /docs and /openapi.json."""

KEYS_ENV = "FACECLI_SERVER_API_KEYS"
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LogLevel = Literal[LOG_LEVELS]


def load_api_keys(api_key_file: Path | None) -> list[str]:
    """Keys from FACECLI_SERVER_API_KEYS and the key file (blank lines and # comments skipped)."""
    keys = [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    if api_key_file is not None:
        try:
            lines = api_key_file.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read --api-key-file {api_key_file}: {exc.strerror or exc}") from None
        keys += [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    return list(dict.fromkeys(keys))


@common.fatal_errors
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; put TLS in front)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    db: Path = common.DbOpt,
    api_key_file: Path = typer.Option(None, "--api-key-file", dir_okay=False, help="File with the accepted API keys, one per line (added to FACECLI_SERVER_API_KEYS)."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Accept requests without a key; only allowed on a loopback --host."),
    max_body_bytes: int = typer.Option(32 * 1024 * 1024, "--max-body-bytes", min=1024, help="Largest request body accepted; bigger ones get 413 ERR_PAYLOAD_IS_TOO_LARGE."),
    workers: int = typer.Option(2, "--inference-workers", min=1, help="Requests doing detection/embedding at once (others wait their turn)."),
    log_level: LogLevel = typer.Option("info", "--log-level", case_sensitive=False, help="How much the server logs."),
    models_dir: Path = common.ModelsDirOpt,
    threads: int = common.ThreadsOpt,
    device: common.Device = common.DeviceOpt,
    config: Path = common.ConfigOpt,
) -> None:
    from facecli.sinks.transport import is_loopback

    if log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    settings = Settings({"models_dir": models_dir, "threads": threads, "device": device, "db": db}, config_path=config)
    keys = load_api_keys(api_key_file)
    if no_auth:
        if not is_loopback(host):
            raise ConfigError(f"--no-auth is only allowed on a loopback address, not {host}",
                              hint="set FACECLI_SERVER_API_KEYS or --api-key-file, or use --host 127.0.0.1")
        api_keys = None
    elif not keys:
        raise ConfigError("no API keys: the server would accept anyone",
                          hint=f"set {KEYS_ENV}=key1,key2 or --api-key-file FILE (or --no-auth on 127.0.0.1)")
    else:
        api_keys = keys

    import uvicorn

    from facecli.engine import engine as eng
    from facecli.pipeline.check import FaceChecker
    from facecli.server.app import create_app
    from facecli.engine import pg
    from facecli.sinks.factory import resolve_db_path, resolve_pg_url

    url = resolve_pg_url("local", settings.get("db"))
    path = None if url else resolve_db_path("local", settings.get("db"))
    if url is None and path is None:
        raise ConfigError("facecli serve needs a gallery: --db PATH (SQLite) or --db postgresql://... (or FACECLI_DB)")
    try:
        if url is not None:
            engine = pg.PgEngine(url)
            path = engine.target  # the URL with any password masked
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            engine = eng.Engine(path, lock_timeout=30.0)
    except eng.EngineError as exc:
        raise TargetError(f"cannot open the gallery: {exc}") from None
    try:
        checker = FaceChecker.open(common.build_check_config(settings, None, None))
        app = create_app(engine, checker, api_keys, max_body_bytes=max_body_bytes, inference_workers=workers)
        auth = "no authentication (loopback only)" if api_keys is None else f"{len(api_keys)} API key(s)"
        err.print(f"facecli serve: {safe_text(path)} on http://{safe_text(host)}:{port} with {auth}; API description at /docs")
        uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), server_header=False)
    finally:
        engine.close()
