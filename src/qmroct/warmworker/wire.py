"""Messages between a job and the warm worker: length-prefixed pickles, file descriptors
passed with the length (SCM_RIGHTS).

Pickle is safe here only because both ends are the same user: the socket lives in a 0700
folder and the worker checks the peer's uid (:func:`peer_is_us`).
"""

from __future__ import annotations

import os
import pickle
import socket
import struct

_LENGTH = struct.Struct("!I")
MAX_FDS = 3


def send(sock: socket.socket, message: object, fds: tuple[int, ...] = ()) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    header = _LENGTH.pack(len(data))
    if fds:
        # the descriptors ride on the 4 header bytes, sent on their own
        sent = socket.send_fds(sock, [header], list(fds))
        sock.sendall(header[sent:])
    else:
        sock.sendall(header)
    sock.sendall(data)


def receive(sock: socket.socket) -> tuple[object, list[int]] | None:
    """The next message and the descriptors that came with it; None at end of stream."""
    header, fds, _flags, _addr = socket.recv_fds(sock, _LENGTH.size, MAX_FDS)
    if not header:
        return None
    header += _exactly(sock, _LENGTH.size - len(header))
    (length,) = _LENGTH.unpack(header)
    return pickle.loads(_exactly(sock, length)), fds


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("the other end closed the connection mid-message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def peer_is_us(sock: socket.socket) -> bool:
    """Whether the process at the other end runs as this process's user."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def folder_path(dir_fd: int, name: str) -> str:
    """A path to ``name`` in an open folder that fits a socket address (108 bytes) however
    deep the folder is (a run folder under pytest's or a job's temporary tree)."""
    return f"/proc/self/fd/{dir_fd}/{name}"
