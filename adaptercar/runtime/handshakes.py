"""Stop a listening socket from completing new TCP handshakes, before it is closed.

Closing a listener resets every connection the kernel completed but nobody accepted yet. The
JSON front accepts its queue right before it closes, but the kernel can complete one more
connection between the last accept and the close: its client sees ECONNRESET, and cannot
tell whether its request was read. A socket filter that drops SYNs stops that: the kernel no
longer starts handshakes on this socket (those under way still complete), so once they are
in and the queue is drained it stays empty. A client that connects in that instant
retransmits its SYN (after ~1 s) and is refused then, or served by another worker sharing
the port: a clear failure, safe to retry.
"""

from __future__ import annotations

import ctypes
import socket
import sys

_SO_ATTACH_FILTER = 26  # <asm-generic/socket.h>; the socket module does not export it
# Classic BPF; a TCP socket's filter sees the packet from its TCP header on
_LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS: A = packet[k]
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K: if A & k goto jt else goto jf
_RET = 0x06  # BPF_RET | BPF_K: keep k bytes of the packet, 0 = drop it
_TCP_FLAGS = 13  # offset of the flags byte in the TCP header
_SYN = 0x02


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def refuse_new_handshakes(sock: socket.socket) -> bool:
    """Attach the drop-SYNs filter (Linux). False where that is not possible: the listener
    then closes as before, with the small race described above."""
    if sys.platform != "linux":
        return False
    code = (_SockFilter * 4)(
        _SockFilter(_LDB_ABS, 0, 0, _TCP_FLAGS),
        _SockFilter(_JSET, 0, 1, _SYN),
        _SockFilter(_RET, 0, 0, 0),  # a SYN: dropped
        _SockFilter(_RET, 0, 0, 0xFFFFFFFF),  # the rest (the ACKs of handshakes under way): kept
    )
    prog = _SockFprog(len(code), code)  # the kernel copies the program at attach
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, bytes(prog))
    except OSError:
        return False
    return True
