"""Paths built from archive content: XNAT's label rule, safe path segments, confinement.

Archive metadata (labels, IDs, file names) is other people's data and may be
hostile: ``../../x`` as a label, ``/etc`` as a scan ID, a ``files/`` folder that
is a link to ``/etc/ssh``. Three rules, each enforced here and only here:

* **Labels and IDs** are checked against XNAT's own rule before they are
  trusted (:func:`check_label`). XNAT accepts a label or ID only when it
  matches ``^[A-z0-9_-]+$`` (``REGEX_VALID_ID`` in
  NrgXnat/xnat ``src/main/java/org/nrg/xft/utils/XftStringUtils.java``, used by
  the experiment and subject REST resources, which answer 417 "Invalid
  character in experiment label"). Java's ``A-z`` is the code point range
  0x41-0x7A, so ``[ \\ ] ^ ` `` are valid too; we keep XNAT's rule exactly so
  that every label XNAT accepts computes.
* **Path segments** (:func:`path_segment`): a name becomes a file or folder
  name as it is only when it is plain (``[A-Za-z0-9_-]``), at most
  ``PLAIN_MAX`` characters and not periodic in Snakemake's sense (Snakemake
  refuses a wildcard value that ends in a unit repeated 20 or more times,
  ``PeriodicWildcardError``, snakemake/dag.py ``check_periodic_wildcards`` with
  snakemake/io ``PeriodicityDetector(min_repeat=20)``). Anything else gets
  a readable prefix, a dot and a digest of the full name. XNAT labels never
  contain a dot, so an encoded segment can never equal a plain one.
* **Confinement** (:func:`confined`): every path built from archive content is
  resolved (symlinks included) and must lie under its root.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path, PurePosixPath

XNAT_LABEL = re.compile(r"[A-z0-9_-]+")  # XNAT's REGEX_VALID_ID (see module docstring)
PLAIN = re.compile(r"[A-Za-z0-9_-]+")
PLAIN_MAX = 100  # longer names are encoded: "<name>_qmroct_<algorithm>" must stay < 255 bytes
PERIODIC_MIN_REPEAT = 20  # Snakemake's PeriodicityDetector default
_PERIODIC = re.compile(r"(.+?)\1{%d,}$" % (PERIODIC_MIN_REPEAT - 1), re.DOTALL)


class UnsafePath(ValueError):
    """A name or path from the archive that must not become (part of) a local path."""


def check_label(kind: str, value: str) -> None:
    """Raise UnsafePath unless ``value`` is a label or ID XNAT itself would accept."""
    if not isinstance(value, str) or not XNAT_LABEL.fullmatch(value):
        shown = repr(value)[:80]
        raise UnsafePath(
            f"{kind} {shown} is not a valid XNAT label (letters, digits, _ and - only)"
        )


def is_periodic(value: str) -> bool:
    """True when Snakemake would raise PeriodicWildcardError for this wildcard value."""
    return bool(_PERIODIC.search(value))


def path_segment(name: str, limit: int = PLAIN_MAX) -> str:
    """``name`` itself when it is safe as a file name and as a Snakemake wildcard value,
    otherwise ``<readable prefix>.<digest>``; the same name always gives the same segment."""
    if len(name) <= limit and PLAIN.fullmatch(name) and not is_periodic(name):
        return name
    prefix = "".join(c for c in name if c.isascii() and (c.isalnum() or c in "_-"))[:40]
    # The digest ends the segment, so the whole segment is never periodic: a repeated
    # unit would need twenty dots.
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{prefix or 'x'}.{digest}"


def check_relative(kind: str, value: str) -> PurePosixPath:
    """A relative path from the archive (a file name, possibly with folders) that stays
    where it is put: not absolute, no empty, '.' or '..' parts, no NUL or control characters."""
    if not isinstance(value, str) or not value:
        raise UnsafePath(f"{kind} is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise UnsafePath(f"{kind} {value!r} contains control characters")
    path = PurePosixPath(value)
    if path.is_absolute() or any(part in ("", ".", "..") for part in value.split("/")):
        raise UnsafePath(f"{kind} {value!r} is not a plain relative path")
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in path.parts):
        raise UnsafePath(f"{kind} {value[:60]!r}... has a part longer than 255 bytes")
    return path


def confined(root: Path | str, path: Path | str) -> Path:
    """``path`` resolved (symlinks followed) if it lies under ``root`` resolved; else UnsafePath.

    The one check every path built from archive content goes through, for
    reading and for writing.
    """
    real_root = Path(root).resolve()
    real = Path(path).resolve()
    if real != real_root and not real.is_relative_to(real_root):
        raise UnsafePath(f"{path} leads outside {root} (to {real})")
    return real


def is_confined(root: Path | str, path: Path | str) -> bool:
    try:
        confined(root, path)
    except UnsafePath:
        return False
    return True
