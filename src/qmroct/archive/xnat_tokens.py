"""Credentials and alias tokens: the head process's password never reaches a job.

Credentials come from ``XNAT_USER``/``XNAT_PASS`` or ``~/.netrc``, never from
config; a server URL with ``user:password@`` in it is refused
(``check_server_url``).

At the start of a run the head process exchanges the user's credentials
(``~/.netrc`` or ``XNAT_USER``/``XNAT_PASS``) for an XNAT alias token
(``GET /data/services/tokens/issue``) and puts only the token in the
environment jobs inherit, the way XNAT's Container Service does::

    XNAT_HOST=<server>  XNAT_USER=<alias>  XNAT_PASS=<secret>

The password stays in the keeper's memory, used to renew the token before it
expires (a fresh token for jobs started later; jobs already running keep
theirs until its own expiry) and to invalidate every token it issued at the end
of the run (``/data/services/tokens/invalidate/<alias>``). Every alias issued
is recorded (never its secret) in ``.qmroct/xnat/tokens.json`` with its owner
process, so the next run invalidates what a killed run left valid.

In the Snakefile::

    onstart:
        start_archive_tokens(config["archive"])
    onsuccess:
        stop_archive_tokens()
    onerror:
        stop_archive_tokens()
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import netrc
import os
import threading
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from qmroct.archive.base import ArchiveError
from qmroct.archive.xnat_http import XnatHttp, XnatNotFound
from qmroct.runlock import ProcessId

log = logging.getLogger("qmroct.archive.xnat")
ENV_KEYS = ("XNAT_HOST", "XNAT_USER", "XNAT_PASS")
# where a run records the aliases it issued (relative to the workflow folder)
DEFAULT_LEDGER = Path(".qmroct/xnat/tokens.json")


def check_server_url(server: str) -> str:
    """The server URL, refused when empty or when it carries credentials
    (``https://user:pw@host``): a URL is written into manifests, logs and job
    inputs, so a password there would be persisted. The message never repeats
    the URL (it would repeat the password)."""
    if not server:
        raise ArchiveError(
            "XNAT archive: no server URL (set archive.server in config or XNAT_HOST)"
        )
    parts = urlsplit(server)
    if "@" in parts.netloc:
        raise ArchiveError(
            f"XNAT archive: the server URL carries credentials (user:password@{parts.hostname}); "
            "remove them from archive.server / XNAT_HOST and put them in ~/.netrc or in "
            "XNAT_USER/XNAT_PASS"
        )
    return server


def resolve_credentials(
    server: str | None, netrc_file: str | None = None, environ: Any = None
) -> tuple[str, str, str]:
    """(server, user, password) from the environment or ~/.netrc, never config.

    ``XNAT_HOST`` gives the server when config does not; ``XNAT_USER`` and
    ``XNAT_PASS`` win over ``~/.netrc`` (jobs get an alias token that way).
    """
    environ = os.environ if environ is None else environ
    server = check_server_url((server or environ.get("XNAT_HOST") or "").rstrip("/"))
    user, password = environ.get("XNAT_USER"), environ.get("XNAT_PASS")
    if user and password:
        return server, user, password
    host = urlsplit(server).hostname or ""
    netloc = urlsplit(server).netloc
    try:
        rc = netrc.netrc(netrc_file or environ.get("NETRC") or None)
        auth = rc.authenticators(netloc) or rc.authenticators(host)
    except FileNotFoundError:
        auth = None
    except netrc.NetrcParseError as err:
        raise ArchiveError(
            f"XNAT archive: cannot read the netrc file: {err.msg} (line {err.lineno})"
        ) from None
    if auth and auth[0] and auth[2]:
        return server, auth[0], auth[2]
    raise ArchiveError(
        f"XNAT archive: no credentials for {host}: add 'machine {host} login USER password ...' "
        "to ~/.netrc or set XNAT_USER and XNAT_PASS in the environment "
        "(never in config.yaml or on the command line)"
    )


def pyxnat_interface(server: str, user: str, password: str, verify: bool | str = True) -> Any:
    """A pyxnat Interface (no network call yet), with a clear error when pyxnat cannot start."""
    try:
        import pyxnat

        return pyxnat.Interface(server=server, user=user, password=password, verify=verify)
    except ModuleNotFoundError as err:  # pyxnat 1.6.4 imports nibabel without declaring it
        raise ArchiveError(
            f"the XNAT backend needs pyxnat 1.6.4 and its undeclared imports: {err} "
            "(pip install pyxnat==1.6.4 nibabel==5.4.2)"
        ) from None


@dataclass(frozen=True)
class AliasToken:
    alias: str
    secret: str
    expires: float  # epoch seconds (XNAT's estimatedExpirationTime / 1000)
    issued: float

    def __repr__(self) -> str:  # never print the secret
        return f"AliasToken(alias={self.alias!r}, expires={self.expires:.0f})"

    def environment(self, server: str) -> dict[str, str]:
        return {"XNAT_HOST": server, "XNAT_USER": self.alias, "XNAT_PASS": self.secret}


def login(
    server: str, user: str, password: str, verify: bool | str = True, timeout: float = 30.0
) -> XnatHttp:
    """One connection (one XNAT login session once used); ``close()`` ends it."""
    intf = pyxnat_interface(server, user, password, verify)
    return XnatHttp(intf, server, user, timeout=timeout, retries=3, backoff=0.5)


def issue_token(
    server: str,
    user: str,
    password: str,
    verify: bool | str = True,
    timeout: float = 30.0,
    http: XnatHttp | None = None,
) -> AliasToken:
    """A new alias token (through ``http`` when given, else a login of its own)."""
    own = http is None
    http = http or login(server, user, password, verify, timeout)
    try:
        data = http.get(
            "/data/services/tokens/issue", params={"format": "json"}, what="alias token"
        ).json()
    finally:
        if own:
            http.close()
    try:
        expires = float(data.get("estimatedExpirationTime") or 0) / 1000.0
        return AliasToken(
            alias=data["alias"],
            secret=data["secret"],
            expires=expires or time.time() + 48 * 3600,
            issued=time.time(),
        )
    except (KeyError, TypeError, ValueError):
        raise ArchiveError(
            f"XNAT at {server} answered an alias token without alias/secret"
        ) from None


def invalidate_token(http: XnatHttp, alias: str) -> bool:
    """Invalidate one token; False when XNAT no longer knows it (404: invalidated
    before, or removed by XNAT's hourly cleanup of expired tokens; both fine)."""
    try:
        http.get(
            f"/data/services/tokens/invalidate/{alias}",
            params={"format": "json"},
            what=f"invalidate token {alias[:8]}",
        )
    except XnatNotFound:
        return False
    return True


class TokenLedger:
    """The aliases a run issued, on disk, so the next run can invalidate what a
    killed run (kill -9: no handler ran) left valid. Never the secrets. Each
    entry names its owner process (PID + start time): a live run's tokens are
    never touched by another run in the same folder."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # released by the kernel if we die
            try:
                entries = json.loads(self.path.read_text()).get("tokens", [])
            except (FileNotFoundError, ValueError, AttributeError):
                entries = []
            yield entries
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps({"tokens": entries}, indent=1))
            os.replace(tmp, self.path)

    def add(self, server: str, token: AliasToken) -> None:
        me = asdict(ProcessId.of(os.getpid()))
        with self._locked() as entries:
            entries.append(
                {"alias": token.alias, "server": server, "expires": token.expires, "owner": me}
            )

    def remove(self, aliases: set[str]) -> None:
        with self._locked() as entries:
            entries[:] = [e for e in entries if e.get("alias") not in aliases]

    def orphans(self, server: str) -> list[str]:
        """Aliases on ``server`` whose owner process is gone."""
        nobody = {"pid": 0, "start_ticks": None, "boot_id": None}
        with self._locked() as entries:
            return [
                e["alias"]
                for e in entries
                if e.get("server") == server and not ProcessId(**e.get("owner", nobody)).alive()
            ]


class TokenKeeper:
    """Issues, hands down (environment), renews and invalidates alias tokens,
    through one login session of the user that lasts as long as the keeper."""

    def __init__(
        self,
        server: str | None = None,
        verify: bool | str = True,
        renew_fraction: float = 0.8,
        min_renew_interval: float = 1.0,
        netrc_file: str | None = None,
        environ: MutableMapping[str, str] | None = None,
        timeout: float = 30.0,
        ledger: Path | str | None = None,
    ):
        self.environ = os.environ if environ is None else environ
        self.server, self._user, self._password = resolve_credentials(
            server, netrc_file, self.environ
        )
        self.verify = verify
        self.renew_fraction = renew_fraction
        self.min_renew_interval = min_renew_interval
        self.timeout = timeout
        self.ledger = TokenLedger(Path(ledger)) if ledger else None
        self.tokens: list[AliasToken] = []
        self.current: AliasToken | None = None
        self._saved = {k: self.environ.get(k) for k in ENV_KEYS}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._conn: XnatHttp | None = None

    @property
    def http(self) -> XnatHttp:
        if self._conn is None:
            self._conn = login(self.server, self._user, self._password, self.verify, self.timeout)
        return self._conn

    def start(self) -> AliasToken:
        self.invalidate_orphans()
        token = self.renew()
        self._thread = threading.Thread(target=self._run, name="xnat-token-renewal", daemon=True)
        self._thread.start()
        return token

    def invalidate_orphans(self) -> int:
        """Invalidate the tokens runs that died left in the ledger (a run that ended
        normally removed its own). Returns how many XNAT still knew."""
        if self.ledger is None:
            return 0
        done, known = set(), 0
        for alias in self.ledger.orphans(self.server):
            try:
                known += invalidate_token(self.http, alias)
                done.add(alias)
            except ArchiveError as err:  # kept for the next run
                log.warning(
                    "XNAT alias token %s... left by a stopped run could not be invalidated: %s",
                    alias[:8],
                    err,
                )
        if done:
            self.ledger.remove(done)
            log.warning("XNAT: %d alias token(s) left by a stopped run invalidated", known)
        return known

    def renew(self) -> AliasToken:
        token = issue_token(self.server, self._user, self._password, http=self.http)
        if self.ledger is not None:
            self.ledger.add(self.server, token)  # before any job can hold it
        with self._lock:
            self.tokens.append(token)
            self.current = token
            self.environ.update(token.environment(self.server))
        log.info(
            "XNAT alias token %s... issued, valid until %s",
            token.alias[:8],
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(token.expires)),
        )
        return token

    def _due(self) -> float:
        token = self.current
        assert token is not None
        lifetime = max(0.0, token.expires - token.issued)
        return max(
            self.min_renew_interval, token.issued + lifetime * self.renew_fraction - time.time()
        )

    def _run(self) -> None:
        while not self._stop.wait(self._due()):
            try:
                self.renew()
            except ArchiveError as err:  # keep the old token; try again soon
                log.warning("XNAT alias token renewal failed: %s", err)
                self._stop.wait(self.min_renew_interval)

    def stop(self) -> None:
        """Stop renewing, invalidate every token issued (also those past their
        estimated expiry: XNAT keeps accepting them until its hourly cleanup),
        restore the environment, end the login session."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        done = set()
        for token in self.tokens:
            try:
                invalidate_token(self.http, token.alias)
                done.add(token.alias)
            except ArchiveError as err:
                log.warning(
                    "XNAT alias token %s... could not be invalidated: %s", token.alias[:8], err
                )
        if self.ledger is not None and done:
            self.ledger.remove(done)
        with self._lock:
            for key, value in self._saved.items():
                if value is None:
                    self.environ.pop(key, None)
                else:
                    self.environ[key] = value
        self.tokens = []
        self.current = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "TokenKeeper":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_KEEPER: TokenKeeper | None = None


def start_archive_tokens(archive_config: dict[str, Any]) -> TokenKeeper | None:
    """Snakefile onstart: for an XNAT archive, hand jobs an alias token only."""
    global _KEEPER
    if archive_config.get("backend") != "xnat" or not archive_config.get("tokens", True):
        return None
    if _KEEPER is None:
        _KEEPER = TokenKeeper(
            server=archive_config.get("server"),
            verify=archive_config.get("verify", True),
            netrc_file=archive_config.get("netrc_file"),
            ledger=DEFAULT_LEDGER,  # the workflow folder (onstart runs there)
        )
        _KEEPER.start()
    return _KEEPER


def stop_archive_tokens() -> None:
    """Snakefile onsuccess/onerror: invalidate the run's tokens."""
    global _KEEPER
    if _KEEPER is not None:
        keeper, _KEEPER = _KEEPER, None
        keeper.stop()
