"""Messages between a job and the warm worker: length-prefixed ``marshal`` data (dicts,
lists, strings, numbers, bytes), file descriptors passed with the length (SCM_RIGHTS).

Both ends are the same user: the socket lives in a 0700 folder and the worker checks the
peer's uid (:func:`peer_is_us`).

Written on ``_socket``, the C module under :mod:`socket`, and ``marshal``, both built into
the interpreter: the job's entry process (:mod:`.client`) imports this, and ``socket`` and
``pickle`` cost it ~12 ms of CPU (enum conversions, selectors, ``re``) in every job, eight jobs
per session. The worker's sockets (``socket.socket``, a subclass) work here alike.
"""

from __future__ import annotations

import _socket
import marshal
import os
import sys

_HEADER = 4  # bytes of length, big-endian
MAX_FDS = 3
_INT = 4  # a C int, as SCM_RIGHTS carries descriptors (``array`` would import collections)


def send(sock: _socket.socket, message: object, fds: tuple[int, ...] = ()) -> None:
    data = marshal.dumps(message)
    header = len(data).to_bytes(_HEADER, "big")
    if fds:
        # the descriptors ride on the 4 header bytes, sent on their own
        packed = b"".join(fd.to_bytes(_INT, sys.byteorder) for fd in fds)
        rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, packed)]
        sent = sock.sendmsg([header], rights)
        sock.sendall(header[sent:])
    else:
        sock.sendall(header)
    sock.sendall(data)


def receive(sock: _socket.socket) -> tuple[object, list[int]] | None:
    """The next message and the descriptors that came with it; None at end of stream."""
    fds = []
    header, ancillary, _flags, _addr = sock.recvmsg(_HEADER, _socket.CMSG_LEN(MAX_FDS * _INT))
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [
                int.from_bytes(data[i : i + _INT], sys.byteorder)
                for i in range(0, len(data) - len(data) % _INT, _INT)
            ]
    if not header:
        return None
    header += _exactly(sock, _HEADER - len(header))
    length = int.from_bytes(header, "big")
    return marshal.loads(_exactly(sock, length)), fds


def _exactly(sock: _socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the connection mid-message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def peer_is_us(sock: _socket.socket) -> bool:
    """Whether the process at the other end runs as this process's user."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 3 * _INT)  # pid, uid, gid
    uid = int.from_bytes(creds[_INT : 2 * _INT], sys.byteorder, signed=True)
    return uid == os.getuid()


def folder_path(dir_fd: int, name: str) -> str:
    """A path to ``name`` in an open folder that fits a socket address (108 bytes) however
    deep the folder is (a run folder under pytest's or a job's temporary tree)."""
    return f"/proc/self/fd/{dir_fd}/{name}"
