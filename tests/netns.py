"""Throwaway "hosts" for tests: Linux network namespaces wired to one private Ethernet segment.

A :class:`Network` makes a switch namespace holding a bridge, and each :meth:`Network.add_host` makes a namespace
with ``lo`` up and an ``eth0`` whose veth peer is a port of that bridge. Nothing is created in the machine's own
namespace: every link lives in a namespace of ours, so deleting the namespaces removes them all, and the segment has
no route to the machine's networks. Namespace names carry a random suffix so that parallel runs cannot clash.

Processes run on a host through ``ip netns exec``, which execs the command (no fork), so the process we start is the
program itself and signals reach it directly. The test process reaches the hosts by switching one of its threads
into a host's namespace (:meth:`Host.entered`), which makes its sockets that host's.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

#: setns(2) flag for a network namespace.
CLONE_NEWNET = 0x40000000
#: The segment's addresses: a /24 of 10/8 that home and cloud networks rarely use. It never leaves our namespaces,
#: so it cannot clash with the machine's own networks even if they use it.
SUBNET = "10.231.87"
FIRST_HOST = 10


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed ({result.returncode}): {result.stderr.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why namespaces, veth pairs and bridges cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` command is not installed"
    if not hasattr(ctypes.CDLL(None), "setns"):
        return "the C library has no setns()"
    probe = f"mlsprobe-{uuid.uuid4().hex[:6]}"
    added = _ip("netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"`ip netns add` failed: {added.stderr.strip()}"
    try:
        for args in (
            ("link", "add", "br0", "type", "bridge"),
            ("link", "add", "probe0", "type", "veth", "peer", "name", "probe1"),
        ):
            made = _ip("-n", probe, *args, check=False)
            if made.returncode != 0:
                return f"`ip link add ... type {args[4]}` failed in a namespace: {made.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


def _setns(path: str | int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    with contextlib.ExitStack() as stack:
        fd = path if isinstance(path, int) else stack.enter_context(open(path)).fileno()
        if libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns to {path}: {os.strerror(errno)}")


class Process:
    """A program started on a host; its stdout and stderr go to one log file."""

    def __init__(self, name: str, popen: subprocess.Popen, log: Path):
        self.name, self.popen, self.log = name, popen, log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)


class Host:
    """One namespace on the segment, with ``eth0`` at :attr:`address`."""

    def __init__(self, network: Network, label: str, namespace: str, address: str, port: str):
        self.network, self.label, self.namespace, self.address, self.port = network, label, namespace, address, port

    def start(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Process:
        """Run ``argv`` in this namespace; its output goes to ``<log_dir>/<name>.log``."""
        log = self.network.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            popen = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=os.environ | (env or {}),
                start_new_session=True,  # a Ctrl-C of pytest reaches pytest only; teardown stops the processes
            )
        process = Process(name, popen, log)
        self.network.processes.append(process)
        return process

    def set_link(self, up: bool) -> None:
        """Plug or unplug this host: its switch port goes up or down, as when a cable is pulled."""
        _ip("-n", self.network.switch, "link", "set", self.port, "up" if up else "down")

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Run the block with the calling thread in this host's namespace (sockets made there belong to it)."""
        with open("/proc/thread-self/ns/net") as home:
            _setns(f"/run/netns/{self.namespace}")
            try:
                yield
            finally:
                _setns(home.fileno())


class Network:
    """A bridge in a namespace of its own and the hosts plugged into it; a context manager that removes it all."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.prefix = f"mls{uuid.uuid4().hex[:6]}"
        self.switch = f"{self.prefix}-switch"
        self.hosts: dict[str, Host] = {}
        self.processes: list[Process] = []
        self.namespaces: list[str] = []

    def __enter__(self) -> Network:
        try:
            self._add_namespace(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "add", name)
        self.namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, label: str) -> Host:
        """A new namespace plugged into the bridge, at the next free address of :data:`SUBNET`."""
        namespace = f"{self.prefix}-{label}"
        port = f"p-{label}"[:15]  # the bridge port's name, in the switch namespace (interface names: 15 characters)
        address = f"{SUBNET}.{FIRST_HOST + len(self.hosts)}"
        self._add_namespace(namespace)
        _ip("-n", namespace, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(self, label, namespace, address, port)
        self.hosts[label] = host
        return host

    def logs(self, lines: int = 40) -> str:
        """The last lines of every process's log, for failure messages."""
        parts = []
        for process in self.processes:
            state = "running" if process.alive() else f"exited {process.popen.returncode}"
            parts.append(f"----- {process.name} (pid {process.pid}, {state}) {process.log}\n{process.tail(lines)}")
        return "\n".join(parts)

    def close(self) -> None:
        """Kill our processes, then delete the namespaces (which deletes their veth pairs and the bridge)."""
        for process in self.processes:
            if process.alive():
                process.kill()
        for namespace in reversed(self.namespaces):
            # Anything still inside is a child of ours (processes started here are the only ones in these
            # namespaces); it would keep the namespace alive after `ip netns del`, so it goes first.
            pids = _ip("netns", "pids", namespace, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", namespace, check=False)
        self.namespaces.clear()
