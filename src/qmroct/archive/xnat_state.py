"""The XNAT archive's state token, kept still by qmroct's own write-backs.

Discovery reruns only when the state token changes; the token is the sessions
listing with each session's ``last_modified``. XNAT's database propagates
``last_modified`` from a changed row to its parents (the ``update_ls_*``
triggers of ``GenericWrapperUtils.GetUpdateFunctions``): writing an assessor,
its files or a scan's quality changes the session's value. Left alone, every
write-back would make the next run rediscover everything.

So the backend records its own writes: around each write to a session it reads
the session's ``last_modified`` before and after and keeps ``after -> before``
in a small ledger (``<cache_dir>/xnat_own_writes.json``). The token then uses,
for each session, the value before qmroct's own writes. A change by anyone else
moves ``last_modified`` past the recorded value and changes the token. What the
ledger cannot tell apart: a change by someone else in the seconds between the
two reads of one write; the next change to that session brings it in.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

if TYPE_CHECKING:
    from qmroct.archive.base import Session
    from qmroct.archive.xnat import XnatArchive

MAX_ENTRIES = 20_000  # a bound on the ledger; the oldest mappings go first


class OwnWrites:
    """{session ID: {last_modified after a qmroct write: the value before it}}."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self, write: bool) -> Iterator[dict[str, dict[str, str]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX if write else fcntl.LOCK_SH)
            try:
                data = json.loads(self.path.read_text())
            except (FileNotFoundError, ValueError):
                data = {}
            yield data
            if write:
                tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(data, sort_keys=True))
                os.replace(tmp, self.path)

    def record(self, session_id: str, before: str, after: str) -> None:
        if not before or not after or before == after:
            return
        with self._locked(write=True) as data:
            chain = data.setdefault(session_id, {})
            chain[after] = chain.get(before, before)  # an earlier own write: its origin
            while sum(len(c) for c in data.values()) > MAX_ENTRIES:
                oldest = min(data, key=lambda k: min(data[k].values(), default=""))
                data.pop(oldest)

    def origins(self) -> dict[str, dict[str, str]]:
        with self._locked(write=False) as data:
            return data

    @staticmethod
    def resolve(origins: dict[str, dict[str, str]], session_id: str, last_modified: str) -> str:
        """The session's last_modified before qmroct's own writes."""
        return origins.get(session_id, {}).get(last_modified, last_modified)


def last_modified(archive: XnatArchive, session: Session) -> str:
    """The session's last_modified: its one row of the project's listing, filtered by
    XNAT itself (QueryOrganizerResource.populateQuery maps ``ID=`` to a criterion)."""
    rows = archive.http.listing(
        f"/data/projects/{quote(session.project)}/experiments",
        columns="ID,last_modified",
        what=f"session {session.key}",
        ID=session.id,
    )
    return next((r.get("last_modified", "") for r in rows if r.get("ID") == session.id), "")


@contextlib.contextmanager
def own_write(archive: XnatArchive, session: Session) -> Iterator[None]:
    """Around a write to the session: its last_modified change is qmroct's own."""
    if archive.own_writes is None:
        yield
        return
    before = last_modified(archive, session)
    yield
    archive.own_writes.record(session.id, before, last_modified(archive, session))
