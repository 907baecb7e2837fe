"""What every job shares: `--config FILE`, `key.path=value` overrides, and clear exits.

Exit codes: 0 success; 1 the run failed (bad input file, failed invariant); 2 bad usage
or bad config; 3 (nightly) a monitoring alert after outputs were committed.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sys
from pathlib import Path
from typing import Iterator

from .config import Config, ConfigError, load_config

EXIT_FAILED, EXIT_USAGE, EXIT_ALERT = 1, 2, 3


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path(sys.argv[0]).resolve().parent / "configs" / "local.yaml"  # beside the job script, wherever it runs
    p.add_argument("--config", default=str(default), help="YAML config (default: jobs/configs/local.yaml)")
    p.add_argument("--verbose", action="store_true", help="show Ray Data's own progress bars and plans")
    p.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None = None) -> tuple[argparse.Namespace, Config]:
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, [*args.overrides, *(["ray.verbose=true"] if args.verbose else [])])
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if not cfg.ray.verbose:
        from .cluster import quiet_driver

        quiet_driver()
    return args, cfg


def date_arg(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


@contextlib.contextmanager
def clear_errors() -> Iterator[None]:
    """Turn our known failures into one readable line and the documented exit code."""
    from .lease import LeaseHeld, LeaseLost
    from .model.store import ModelError
    from .storage import StorageError
    from .suitability import CatalogError
    from .validate import InputFileError

    try:
        yield
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    except CatalogError as exc:
        fail(str(exc), EXIT_USAGE)
    except (InputFileError, ModelError, StorageError, LeaseHeld, LeaseLost) as exc:
        fail(str(exc), EXIT_FAILED)
    except OSError as exc:  # storage unreachable or refused: pyarrow's and s3fs's messages name the path
        fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED)
