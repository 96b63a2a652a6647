"""The project's exceptions, and how a stage turns them into a clean exit."""

from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar


class LongwriterError(Exception):
    """An error a user can act on: printed as one line, exit code 1, no traceback."""


class InputError(LongwriterError):
    """Bad input data: names the file and, where known, the row (1-based) and column."""

    def __init__(self, path: str | Path, message: str, row: int | None = None, column: str | None = None):
        self.path, self.row, self.column, self.message = str(path), row, column, message
        where = self.path
        if row is not None:
            where += f": row {row}"
        if column is not None:
            where += f", column '{column}'" if row is not None else f": column '{column}'"
        super().__init__(f"{where}: {message}")


class ConfigError(LongwriterError):
    """A bad params.yaml entry: names the key."""


F = TypeVar("F", bound=Callable[..., Any])


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    # DVC and schedulers stop work with SIGTERM; turning it into an exception runs every `finally`,
    # so the embedded server is stopped and temporary files are removed, as on Ctrl-C.
    raise KeyboardInterrupt(f"signal {signum}")


def stage_entry(fn: F) -> F:
    """Wrap a stage's main function: SIGTERM behaves like Ctrl-C, known errors exit 1 with one line."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        signal.signal(signal.SIGTERM, _raise_on_sigterm)
        try:
            return fn(*args, **kwargs)
        except LongwriterError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted: completed LLM calls are cached; rerun to resume", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
