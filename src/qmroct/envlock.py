"""The locked Python environment: every transitive distribution qmroct runs on, with its
exact version and sha256 hashes (written by ``make lock`` with ``uv pip compile
--universal --generate-hashes``, from PyPI).

Two locks, kept in this package so that they travel with it:

- ``locks/runtime.txt``: qmroct's own dependencies, what the workflow's jobs run on. A
  worker image installs qmroct first, then this file (``images/worker-cloud-init.yaml``):
  cloud-init user data (64 KiB at most in Nova) cannot carry a lock with every hash, but
  any qmroct source (git URL, wheel, index) carries its package data.
- ``locks/dev.txt``: the same versions plus the ``test`` extra and the OpenStack executor
  plugin's dependencies: what ``make setup`` installs (``pip --require-hashes``), then qmroct
  and the plugin themselves with ``--no-deps``.

``envs/qmroct.yaml`` (the conda path) pins the same versions (tests/test_envs.py), and a
frozen crate records both files with their sha256 (``qmroct.provenance.freeze``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

LOCK_DIR = Path(__file__).resolve().parent / "locks"
RUNTIME_LOCK = LOCK_DIR / "runtime.txt"
DEV_LOCK = LOCK_DIR / "dev.txt"

_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)\s*"
    r"(?:;(?P<marker>.*?))?\s*(?=--hash|$)"
)
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")


# The interpreter every lock and environment of this project targets (pyproject.toml,
# envs/qmroct.yaml, the worker image): markers are evaluated for it where the running
# interpreter is not the one asked about (the conda environment's pins, say).
LINUX_PY311 = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


@dataclass(frozen=True)
class Pin:
    name: str  # normalised (PEP 503)
    version: str
    marker: str  # an environment marker, "" when the pin applies everywhere
    hashes: tuple[str, ...]

    def applies(self, environment: dict[str, str] | None = None) -> bool:
        """Whether the pin is installed in ``environment`` (marker values; default: this
        interpreter)."""
        if not self.marker:
            return True
        from packaging.markers import Marker

        return Marker(self.marker).evaluate(environment)


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> list[Pin]:
    """The pins of a hashed requirements file, in file order. A universal lock may pin one
    name twice under exclusive markers (``contourpy`` by Python version). A line that pins
    nothing, or a pin without a hash, is an error naming it (pip --require-hashes would
    refuse the file anyway, later and less clearly)."""
    text = Path(path).read_text()
    pins = []
    # one requirement per logical line: backslash continuations joined, comments dropped
    for number, line in enumerate(re.sub(r"\\\n", " ", text).splitlines(), 1):
        line = line.split("#", 1)[0].strip()  # "# via ..." lines, the header
        if not line:
            continue
        match = _PIN.match(line)
        hashes = tuple(_HASH.findall(line))
        if match is None or not hashes:
            raise ValueError(f"{path}: requirement {number} is not 'name==version --hash=...'")
        pins.append(
            Pin(normalise(match["name"]), match["version"], (match["marker"] or "").strip(), hashes)
        )
    return pins


def resolved(pins: list[Pin], environment: dict[str, str] | None = None) -> dict[str, Pin]:
    """{name: the pin installed in ``environment``} (default: this interpreter); two pins
    of one name that both apply are an error (the lock is ambiguous there)."""
    out: dict[str, Pin] = {}
    for pin in pins:
        if not pin.applies(environment):
            continue
        if pin.name in out:
            raise ValueError(f"lock pins {pin.name} twice for this environment")
        out[pin.name] = pin
    return out


def differences(pins: list[Pin], installed: list[str]) -> list[str]:
    """How this interpreter's environment (``name==version`` lines, as
    identity.installed_distributions gives them) differs from a lock, one line per
    distribution; [] when it matches. Distributions the lock does not name (pip itself,
    the editable project) are ignored, and so are pins whose marker does not hold here."""
    have = {}
    for line in installed:
        name, _, version = line.partition("==")
        have[normalise(name)] = version
    out = []
    for name, pin in sorted(resolved(pins).items()):
        if name not in have:
            out.append(f"{name}: locked {pin.version}, not installed")
        elif have[name] != pin.version:
            out.append(f"{name}: locked {pin.version}, installed {have[name]}")
    return out
