"""Network namespaces for tests: a process that runs "on another machine".

:class:`NetLab` makes namespaces, each joined to this host by a veth pair
with a private /30 (the host side ``.1``, the namespace side ``.2`` of its
four addresses), and removes all of them on exit, also after a failure.
``Link.cut()`` takes the host side of a pair down, so the namespace's
packets are lost without a word, as when a cable is pulled or a switch
dies; ``Link.restore()`` brings it back.

Needs root and iproute2's ``ip``; :func:`netns_unavailable` says why not, for
``pytest.skip``. Names carry a random tag, so runs at the same time (and
leftovers of a killed run) never collide.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import Self

__all__ = ["Link", "NetLab", "ip", "netns_unavailable"]


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; on failure raise with what it said."""
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip() or res.returncode}")
    return res


@cache
def netns_unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can): not root, no
    ``ip``, or the kernel or a container refusing ``ip netns add``."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need the `ip` command (iproute2)"
    probe = f"ec-probe-{secrets.token_hex(3)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Link:
    """A namespace and the veth pair joining it to the host."""

    ns: str
    host_if: str
    ns_if: str
    host_ip: str
    ns_ip: str

    @property
    def prefix(self) -> list[str]:
        """The command prefix that runs a program inside the namespace."""
        return ["ip", "netns", "exec", self.ns]

    def cut(self) -> None:
        """Take the host side down: nothing passes, nobody is told."""
        ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        """Bring the host side up again."""
        ip("link", "set", self.host_if, "up")

    def connects(self, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from the namespace to the host side's
        ``port`` succeeds now."""
        code = (
            "import socket, sys\n"
            f"socket.create_connection(({self.host_ip!r}, {port}), timeout={timeout}).close()"
        )
        res = subprocess.run(
            [*self.prefix, sys.executable, "-c", code],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return res.returncode == 0


class NetLab:
    """Namespaces made by :meth:`add`, all removed on :meth:`close`."""

    def __init__(self) -> None:
        why = netns_unavailable()
        if why is not None:
            raise RuntimeError(why)
        self.tag = secrets.token_hex(3)
        self.subnet = _free_subnet()
        self.links: list[Link] = []

    def add(self) -> Link:
        """A new namespace with loopback up and a veth pair to the host."""
        n = len(self.links)
        if n >= 64:
            raise RuntimeError("a NetLab holds at most 64 links (one /24)")
        base = int(self.subnet.network_address) + 4 * n
        host_ip, ns_ip = str(ipaddress.ip_address(base + 1)), str(ipaddress.ip_address(base + 2))
        # Interface names have at most 15 characters.
        link = Link(
            f"eventcore-{self.tag}-{n}", f"ech{self.tag}{n}", f"ecn{self.tag}{n}", host_ip, ns_ip
        )
        self.links.append(link)  # before it exists: close() removes what was made of it
        ip("netns", "add", link.ns)
        ip("-n", link.ns, "link", "set", "lo", "up")
        ip("link", "add", link.host_if, "type", "veth", "peer", "name", link.ns_if)
        ip("link", "set", link.ns_if, "netns", link.ns)
        ip("addr", "add", f"{host_ip}/30", "dev", link.host_if)
        ip("-n", link.ns, "addr", "add", f"{ns_ip}/30", "dev", link.ns_if)
        ip("link", "set", link.host_if, "up")
        ip("-n", link.ns, "link", "set", link.ns_if, "up")
        return link

    def close(self) -> None:
        """Remove every namespace and veth pair made (deleting either side
        of a pair deletes both). Goes on past errors, so all are tried."""
        for link in reversed(self.links):
            ip("link", "del", link.host_if, check=False)
            ip("netns", "del", link.ns, check=False)
        self.links.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _free_subnet() -> ipaddress.IPv4Network:
    """A random /24 of 10.0.0.0/8 that no route of this host overlaps."""
    routes = ip("-4", "route", "show", "table", "all", check=False).stdout.split("\n")
    taken = []
    for line in routes:
        first = line.split(" ", 2)[0 if not line.startswith(("local", "broadcast")) else 1]
        try:
            taken.append(ipaddress.ip_network(first, strict=False))
        except ValueError:
            continue  # "default" and the like
    for _ in range(100):
        net = ipaddress.ip_network(
            f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(256)}.0/24"
        )
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free /24 in 10.0.0.0/8 for test namespaces")
