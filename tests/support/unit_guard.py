"""The guard of `make unit` (pytest --unit): the unit layer runs in this process only.

While it is installed, starting a child process (subprocess, multiprocessing, os.fork, spawn,
system) raises ProcessForbidden, and so does connecting a socket to anything but loopback.
Patching the lowest layers (`_posixsubprocess.fork_exec`, os.fork, os.posix_spawn) also catches
asyncio subprocesses and multiprocessing's spawn and forkserver starts, which do not go through
subprocess.Popen. A process test that forgot its mark therefore fails `make unit` loudly instead
of quietly turning the unit layer back into a cluster run.
"""
from __future__ import annotations

import _posixsubprocess
import ipaddress
import multiprocessing.process
import os
import socket
import subprocess

HINT = ("the unit layer (pytest --unit, `make unit`) runs in-process only: this test starts a child "
        "process. Use a process fixture (tests/support/processes.py) or mark it @pytest.mark.process")


class ProcessForbidden(RuntimeError):
    pass


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise ProcessForbidden(f"{what}: {HINT}")
    return refuse


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):
        return True  # AF_UNIX paths and the like stay inside the machine
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: resolving it already leaves the process's world


_PATCHES: list[tuple[object, str, object]] = []


def _patch(owner, name: str, replacement) -> None:
    if hasattr(owner, name):
        _PATCHES.append((owner, name, getattr(owner, name)))
        setattr(owner, name, replacement)


def install() -> None:
    if _PATCHES:
        return
    _patch(subprocess.Popen, "__init__", _refuse("subprocess.Popen"))
    _patch(_posixsubprocess, "fork_exec", _refuse("fork_exec"))
    _patch(multiprocessing.process.BaseProcess, "start", _refuse("multiprocessing.Process.start"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve",
                 "spawnv", "spawnve", "spawnvp", "spawnvpe"):
        _patch(os, name, _refuse(f"os.{name}"))
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, address):
        if not _is_loopback(address):
            raise ProcessForbidden(f"socket connect to {address!r}: the unit layer talks to loopback only")
        return real_connect(self, address)

    def connect_ex(self, address):
        if not _is_loopback(address):
            raise ProcessForbidden(f"socket connect to {address!r}: the unit layer talks to loopback only")
        return real_connect_ex(self, address)
    _patch(socket.socket, "connect", connect)
    _patch(socket.socket, "connect_ex", connect_ex)


def uninstall() -> None:
    while _PATCHES:
        owner, name, original = _PATCHES.pop()
        setattr(owner, name, original)
