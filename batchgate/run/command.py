"""`batchgate run FILE`: flags in, exit code out; the work is tasks/local_run.py.

Exit codes: 0 every line succeeded; 1 some lines failed (both files
written); 2 the file is invalid (errors printed with line numbers, nothing
sent) or the command cannot run (flags, provider, a locked state
directory); 130 interrupted (checkpoints kept: run it again to resume).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tasks.batch_rules import ENDPOINTS

PROGRESS_MODES = ("auto", "bar", "json", "none")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, help="the JSONL file of batch request lines")
    parser.add_argument(
        "-o", "--output", type=Path, help="output file (default: INPUT.results.jsonl)"
    )
    parser.add_argument(
        "--errors", type=Path, help="error file (default: OUTPUT with .errors.jsonl)"
    )
    parser.add_argument("--base-url", help="an OpenAI-compatible base URL, e.g. http://host/v1")
    parser.add_argument(
        "--api-key-env", metavar="VAR", help="the environment variable holding the API key"
    )
    parser.add_argument("--provider", help="a provider named in the BATCHGATE_CONFIG file")
    parser.add_argument(
        "--endpoint",
        choices=sorted(ENDPOINTS),
        help="batch endpoint (default: the first line's url)",
    )
    parser.add_argument(
        "--max-concurrency", type=int, help="requests in flight per provider at most"
    )
    parser.add_argument(
        "--max-lines", type=int, help="refuse files with more request lines (default: no cap)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where checkpoints live (default: .batchgate-run/ next to the output)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="lines per checkpoint (default 1000, or the providers' concurrency if larger)",
    )
    parser.add_argument("--parquet", type=Path, help="also write the results table as Parquet")
    parser.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="auto",
        help="auto: a bar when stdout is a terminal; json: JSON lines on stdout",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors")


def _quiet_logs(level: str) -> None:
    """Failed lines are in the error file; a log line each would bury the bar."""
    if level.upper() != "DEBUG":
        logging.getLogger("batchgate").setLevel(logging.ERROR)


def run_command(args: argparse.Namespace) -> int:
    from tasks.local_run import (
        EXIT_INVALID,
        STATE_DIR_NAME,
        LocalRun,
        RunOptions,
        default_errors_path,
        default_output_path,
        infer_endpoint,
        run_chunk_size,
        run_settings,
    )
    from tasks.run_providers import RunError, resolve_providers

    def fail(message: str) -> int:
        print(f"batchgate run: {message}", file=sys.stderr)
        return EXIT_INVALID

    began = time.monotonic()
    source: Path = args.input
    if not source.is_file():
        return fail(f"{source}: no such file")
    output = args.output or default_output_path(source)
    options = RunOptions(
        input_path=source,
        output_path=output,
        errors_path=args.errors or default_errors_path(output),
        state_root=args.state_dir or output.parent / STATE_DIR_NAME,
        endpoint=args.endpoint or infer_endpoint(source),
        providers=[],
        max_lines=args.max_lines,
        parquet_path=args.parquet,
    )
    if args.chunk_size is not None:
        if args.chunk_size < 1:
            return fail("--chunk-size must be at least 1")
        options.chunk_size = args.chunk_size
    try:
        settings = run_settings(options)
        options.providers = resolve_providers(
            settings,
            dict(os.environ),
            base_url=args.base_url,
            api_key_env=args.api_key_env,
            provider=args.provider,
            max_concurrency=args.max_concurrency,
        )
    except RunError as exc:
        return fail(str(exc))
    if args.chunk_size is None:  # what a kill loses stays under one chunk
        settings.chunk_size = options.chunk_size = run_chunk_size(options.providers)

    mode = "none" if args.quiet else args.progress
    if mode == "auto":
        mode = "bar" if sys.stdout.isatty() else "none"
    _quiet_logs(args.log_level)
    display: Any = None
    if not args.quiet:  # rich and the display only when something is shown
        from rich.console import Console
        from rich.logging import RichHandler

        from batchgate.run import display as run_display

        console = Console(highlight=False)
    if mode == "bar":
        logging.getLogger().handlers = [RichHandler(console=console, show_path=False)]
        display = lambda progress: run_display.show_bar(progress, console)  # noqa: E731
    elif mode == "json":
        display = lambda progress: run_display.show_json(progress, sys.stdout)  # noqa: E731

    run = LocalRun(options, settings)
    try:
        outcome = run.execute(display)
    except RunError as exc:
        return fail(str(exc))
    took = time.monotonic() - began
    if outcome.status == "invalid":
        for error in outcome.errors:
            print(f"{source}: {error.get('message')}", file=sys.stderr)
        print(f"batchgate run: {source} is invalid; nothing was sent", file=sys.stderr)
    elif outcome.status == "failed":
        for error in outcome.errors:
            print(f"batchgate run: {error.get('message')}", file=sys.stderr)
    if mode == "json":
        run_display.print_json_summary(run.progress, outcome, took)
    elif not args.quiet and outcome.status != "invalid":
        paths = {"output": str(options.output_path), "errors": str(options.errors_path)}
        run_display.print_summary(run.progress, outcome, took, console, paths)
    elif outcome.message:
        print(outcome.message, file=sys.stderr)
    return outcome.exit_code
