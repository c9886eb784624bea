"""The `batchgate` command: thin adapters around the app, runner and tools.

batchgate up              Prefect server + runner + gateway, all local
batchgate serve           the gateway alone (uvicorn)
batchgate worker          serve the flows against a remote gateway
batchgate run FILE        run a JSONL file through the engine, no server (resumable)
batchgate mock-upstream   a fake OpenAI-compatible provider
batchgate create-key      create an API key in the local data directory
batchgate doctor          check metadata against blobs (gateway stopped)
batchgate rotate-secret-key  re-encrypt stored secrets under a new key (gateway stopped)

Every command but mock-upstream runs with umask 077: what it and its children
(DuckDB, the Prefect server, flow runs, logs) create is owner-only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from batchgate.up.supervised import watch_supervisor
from storage.db_lock import DatabaseInUse
from storage.private import PRIVATE_UMASK


def _cmd_serve(args: argparse.Namespace) -> int:
    from gateway.malloc import limit_arenas

    limit_arenas()  # before uvicorn and DuckDB start their threads
    import uvicorn

    from gateway.app import create_app
    from storage.secrets import SecretKeyError
    from tasks.settings import load_settings

    settings = load_settings()
    try:
        app = create_app(settings)
    except SecretKeyError as exc:
        print(f"batchgate serve: {exc}", file=sys.stderr)
        return 2
    # A long keep-alive: clients (the openai SDK, workers) reuse connections,
    # and a server closing one just as a client reuses it drops that request.
    # httptools and uvloop, not h11 and asyncio's loop: the same requests take
    # less of the gateway's one core for its own plumbing.
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        http="httptools",
        loop="uvloop",
        log_level=args.log_level,
        access_log=False,
        timeout_keep_alive=75,
    )
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from batchgate.up.supervisor import up

    return up(args)


def _cmd_worker(args: argparse.Namespace) -> int:
    from flows.serve import serve_flows

    serve_flows(log_level=args.log_level)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from batchgate.run.command import run_command

    return run_command(args)


def _cmd_mock_upstream(args: argparse.Namespace) -> int:
    from batchgate.mock_provider.server import run_mock_upstream

    return run_mock_upstream(args)


def _cmd_create_key(args: argparse.Namespace) -> int:
    from storage.metadata import MetadataStore
    from tasks.settings import load_settings

    settings = load_settings()
    store = MetadataStore(settings.db_path)
    record, clear = store.create_api_key(args.name)
    store.close()
    print(f"{record.id} {clear}")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    """Check the data directory; exit 1 if problems, 2 if it cannot be opened
    (a held file: `main`)."""
    from batchgate.ops.doctor import examine
    from storage.blobs import BlobStore
    from storage.metadata import MetadataStore
    from tasks.settings import load_settings

    settings = load_settings()
    if not settings.db_path.exists():
        print(f"batchgate doctor: no database at {settings.db_path}", file=sys.stderr)
        return 2
    try:
        store = MetadataStore(settings.db_path)
    except DatabaseInUse:
        raise  # one line from `main`, as for every command
    except Exception as exc:  # a damaged file: say so, not a traceback
        print(f"batchgate doctor: cannot open {settings.db_path}: {exc}", file=sys.stderr)
        return 2
    try:
        report = examine(store, BlobStore(settings.blob_dir))
    finally:
        store.close()
    print(report.render())
    return 0 if report.ok else 1


def _cmd_rotate_secret_key(args: argparse.Namespace) -> int:
    """Exit 0 when rotated, 2 when nothing could be changed."""
    from batchgate.ops.secret_rotation import RotationError, rotate_secret_key
    from storage.secrets import SecretKeyError
    from tasks.settings import load_settings

    try:
        rotation = rotate_secret_key(load_settings())
    except (RotationError, SecretKeyError) as exc:
        print(f"batchgate rotate-secret-key: {exc}", file=sys.stderr)
        return 2
    print(f"re-encrypted {rotation.re_encrypted} provider keys; {rotation.next_step}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchgate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("BATCHGATE_LOG_LEVEL", "info"),
        help="debug, info, warning or error (default: BATCHGATE_LOG_LEVEL, else info)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser(
        "up",
        help="start Prefect server, runner and gateway",
        description="A local Prefect server (unless PREFECT_API_URL is set), the gateway "
        "and a runner, restarted if one dies; Ctrl-C stops all. Settings: BATCHGATE_* "
        "variables or the BATCHGATE_CONFIG file (README.md, Configuration).",
    ).set_defaults(func=_cmd_up)
    sub.add_parser(
        "serve",
        help="start the gateway only",
        description="The gateway alone (uvicorn on BATCHGATE_HOST:BATCHGATE_PORT); it starts "
        "batches on the Prefect server named by PREFECT_API_URL.",
    ).set_defaults(func=_cmd_serve)
    sub.add_parser(
        "worker",
        help="serve the batch flows (needs BATCHGATE_GATEWAY_URL)",
        description="A runner serving the batch flows against a gateway: needs "
        "PREFECT_API_URL, BATCHGATE_GATEWAY_URL and BATCHGATE_INTERNAL_TOKEN (or the "
        "data directory's internal_token); docs/scale-out.md.",
    ).set_defaults(func=_cmd_worker)

    run = sub.add_parser(
        "run",
        help="run a JSONL batch file against a provider, no server; resumes after Ctrl-C",
        description=(
            "Exit codes: 0 all lines succeeded, 1 some failed (files written), 2 invalid "
            "file or arguments (nothing sent), 130 interrupted (run again to resume)."
        ),
    )
    from batchgate.run.command import add_arguments as add_run_arguments

    add_run_arguments(run)
    run.set_defaults(func=_cmd_run)

    mock = sub.add_parser("mock-upstream", help="a fake OpenAI-compatible provider")
    from batchgate.mock_provider.config import add_arguments

    add_arguments(mock)
    mock.set_defaults(func=_cmd_mock_upstream)

    key = sub.add_parser(
        "create-key",
        help="create an API key (gateway must be stopped; while it runs: POST /admin/keys)",
        description="Prints the new key's id and the key, shown this once. Exit code 2: "
        "the database cannot be opened (the gateway still holds it).",
    )
    key.add_argument("name", help="a name for the key (GET /admin/keys shows it)")
    key.set_defaults(func=_cmd_create_key)

    sub.add_parser(
        "doctor",
        help="check the DuckDB file against the blob directory (gateway must be stopped)",
        description="Exit codes: 0 no problems, 1 problems found (listed), 2 the database "
        "cannot be opened (missing, or the gateway still holds it).",
    ).set_defaults(func=_cmd_doctor)
    sub.add_parser(
        "rotate-secret-key",
        help="re-encrypt the stored provider keys and webhook secrets under a new secret "
        "key (gateway must be stopped; see docs/operations.md)",
        description="With <data_dir>/secret_key: a new key is generated. With "
        "BATCHGATE_SECRET_KEY: the new key comes from BATCHGATE_NEW_SECRET_KEY. Exit codes: "
        "0 rotated, 2 nothing changed.",
    ).set_defaults(func=_cmd_rotate_secret_key)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "mock-upstream":
        # The data directory holds users' data and secrets: nothing this
        # process or its children create there may be readable by others.
        os.umask(PRIVATE_UMASK)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # A child of `up` (the gateway, the runner) stops with it, even a SIGKILLed one.
    watch_supervisor()
    try:
        return int(args.func(args) or 0)
    except DatabaseInUse as exc:
        # Every command that opens the DuckDB file (create-key, doctor,
        # rotate-secret-key, serve) meets a running gateway the same way.
        print(f"batchgate {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
