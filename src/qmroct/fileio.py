"""Atomic file writes and timestamps, the one place every module takes them from.

Atomic: the content goes to a temporary file beside the target (same folder, so same file
system) and ``os.replace`` swaps it in. A reader, or a job killed halfway, sees the old file
or the new one, never half of one. The temporary name carries a random tail, so two writers
(processes or threads) never share one.

Timestamps: local time with its UTC offset in ISO 8601 extended form (``+01:00``, not
``+0100``). That is the form ``xs:dateTime`` accepts, so XNAT's provenance block and History
take it unchanged, and ``datetime.fromisoformat`` reads it on every Python the project runs on.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any


def now_iso() -> str:
    """Now, to the second, as ``2026-03-01T14:05:09+01:00``."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def write_bytes_atomic(path: Path | str, data: bytes, *, make_parents: bool = True) -> None:
    """Replace ``path``'s content with ``data`` atomically.

    ``make_parents=False`` for callers that must not create folders (a folder that vanished
    is an error for them, not something to recreate)."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str, *, make_parents: bool = True) -> None:
    write_bytes_atomic(path, text.encode(), make_parents=make_parents)


def write_json_atomic(path: Path | str, document: Any) -> None:
    """Strict JSON (no NaN/Infinity tokens: jq, other tools and XNAT clients read these
    files), indented by one; NaN and infinities become null (an undefined value)."""
    text = json.dumps(_finite(document), indent=1, allow_nan=False, default=_json_default)
    write_text_atomic(path, text)


def _finite(value: Any) -> Any:
    """NaN and infinities become null, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return _finite(value.tolist())
        if isinstance(value, np.floating):
            return _finite(float(value))
        if isinstance(value, np.integer):
            return int(value)
    except ImportError:
        pass
    return value


def _json_default(value: Any) -> Any:
    try:
        import numpy as np

        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
    except ImportError:
        pass
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
