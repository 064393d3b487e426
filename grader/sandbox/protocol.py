"""The one framing every sandbox channel uses (grader <-> zygote, grader <-> child), both directions.

A frame is [json length: u32][blob length: u64][json object][blob], with file descriptors riding along on the first
bytes (SCM_RIGHTS: shared memory for tensor arguments and for logits). The JSON part says what the frame is; the blob
is a grader.codec value. Everything received from a child is untrusted: sizes are checked before anything is read,
the JSON must be an object, and a malformed frame is a ProtocolError, never a crash of the reader.
"""
from __future__ import annotations

import json
import socket
import struct
import time

HEADER = struct.Struct("<IQ")          # json length, blob length
MAX_JSON = 1 << 20                     # a frame's JSON part (an op, a status, a message)
MAX_BLOB = 256 << 20                   # a value; far above any exercise's tensors
MAX_FDS = 16


class ProtocolError(Exception):
    """A frame that is too big, truncated or not a JSON object."""


def send_frame(sock: socket.socket, header: dict, blob: bytes = b"", fds: list[int] = ()) -> None:
    data = json.dumps(header).encode()
    frame = HEADER.pack(len(data), len(blob)) + data + blob
    if fds:
        sent = socket.send_fds(sock, [frame[:HEADER.size]], list(fds))
        sock.sendall(frame[sent:])
    else:
        sock.sendall(frame)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - got, 1 << 20))
        except socket.timeout:
            raise TimeoutError from None
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket, deadline: float | None = None, max_blob: int = MAX_BLOB,
               max_fds: int = 0) -> tuple[dict, bytes, list[int]]:
    """One frame and the descriptors sent with it. TimeoutError past the deadline, EOFError if the peer is gone,
    ProtocolError on anything malformed (descriptors received with a malformed frame are closed)."""
    import os
    fds: list[int] = []
    if max_fds:
        if deadline is not None:
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            first, fds, _, _ = socket.recv_fds(sock, HEADER.size, max_fds)
        except socket.timeout:
            raise TimeoutError from None
        if not first:
            raise EOFError
        head = first + _recv_exact(sock, HEADER.size - len(first), deadline)
    else:
        head = _recv_exact(sock, HEADER.size, deadline)
    try:
        n_json, n_blob = HEADER.unpack(head)
        if n_json > MAX_JSON or n_blob > max_blob:
            raise ProtocolError(f"a message of {n_json + n_blob} bytes is over the limit of {max_blob} bytes")
        raw = _recv_exact(sock, n_json, deadline)
        blob = _recv_exact(sock, n_blob, deadline) if n_blob else b""
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError):
            raise ProtocolError("a message was not valid JSON") from None
        if type(header) is not dict:
            raise ProtocolError("a message was not a JSON object")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return header, blob, list(fds)
