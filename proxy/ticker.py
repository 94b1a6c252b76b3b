"""A periodic timer as a file descriptor (Linux ``timerfd``), for the reactor's epoll.

Why: a busy reactor must still give trio's timers a turn, and the obvious way, a timeout on
every ``epoll_wait``, arms and cancels a kernel timer per wait. On the VMs we run on that cost
20-30 µs per request at one client (docs/performance.md, "The reactor"). A periodic timerfd is
armed once: the kernel re-arms it on each expiry, and the reactor's waits carry no timeout.

Python 3.11's ``os`` has no timerfd (3.13 does), so it is called through ctypes.
"""

from __future__ import annotations

import ctypes
import os

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_settime.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(_Itimerspec),
    ctypes.c_void_p,
]


def _check(result: int) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


class Ticker:
    """Readable every ``interval`` seconds while started; ``drain`` after each wakeup."""

    def __init__(self, interval: float) -> None:
        self.fd = _check(_libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC))
        sec, nsec = divmod(max(int(interval * 1e9), 1), 1_000_000_000)
        period = _Timespec(sec, nsec)
        self._on = _Itimerspec(period, period)
        self._off = _Itimerspec(_Timespec(0, 0), _Timespec(0, 0))
        self.running = False

    def start(self) -> None:
        if not self.running:
            _check(_libc.timerfd_settime(self.fd, 0, ctypes.byref(self._on), None))
            self.running = True

    def stop(self) -> None:
        if self.running:
            _check(_libc.timerfd_settime(self.fd, 0, ctypes.byref(self._off), None))
            self.running = False
            self.drain()

    def drain(self) -> int:
        """Expiries since the last drain (0 if none)."""
        try:
            return int.from_bytes(os.read(self.fd, 8), "little")
        except BlockingIOError:
            return 0

    def close(self) -> None:
        os.close(self.fd)
