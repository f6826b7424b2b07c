"""Errors a user can act on, said in one line; the whole chain kept in a log file.

A wrong password or an unreachable archive found while Snakemake builds its plan
would otherwise arrive wrapped in Snakemake's InputFunctionException, with the
sentence that says what to do buried among wildcards and a traceback. Here the
head writes the sentence on the console (and Snakemake's run log) and the chain
into ``logs/archive.log``, and ends the run before any job: nothing was started,
so there is nothing to clean up (Snakemake releases its lock on the way out).
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from pathlib import Path
from typing import Iterator

from qmroct.archive.base import ArchiveError

ARCHIVE_LOG = Path("logs") / "archive.log"


def _console() -> logging.Logger:
    try:  # Snakemake's own logger: console and .snakemake/log/<run>.snakemake.log
        from snakemake.logging import logger

        return logger
    except ImportError:  # outside Snakemake
        return logging.getLogger("qmroct")


@contextlib.contextmanager
def stop_plainly_on_archive_error(log_path: Path = ARCHIVE_LOG) -> Iterator[None]:
    """Run the block; an ArchiveError ends the process with its message in one line."""
    try:
        yield
    except ArchiveError as exc:
        log_path = Path(log_path)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as fh:
                fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                fh.write("".join(traceback.format_exception(exc)))
            where = f" (details: {log_path})"
        except OSError:  # the message matters more than its log
            where = ""
        _console().error(f"qmroct: {exc}{where}")
        raise SystemExit(1) from exc
