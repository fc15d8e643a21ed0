"""Reaching the embedded Redis from other machines: ``--listen HOST:PORT``.

By default the embedded server listens only on a unix socket in its data
directory. With a listen address it also serves TCP there, and then:

- an ACL user ``eventcore`` with a generated password is the only way in:
  the ``default`` user is switched off (and has no password), so a client
  that does not authenticate can run no command, on TCP or on the socket;
- the password is kept in ``<data_dir>/redis.password`` (mode 0600), so a
  restart reuses it and the line printed for other machines stays valid;
  the ACL file the server loads (``users.acl``, 0600) holds only its SHA-256;
- with a certificate and key the TCP port speaks only TLS (``rediss://``);
  clients are not asked for certificates (the password authenticates them);
- listening without a password is refused on any address but loopback.

Pure logic apart from the password and ACL files.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from eventcore.errors import EventcoreError

__all__ = [
    "ACL_NAME",
    "ACL_USER",
    "PASSWORD_NAME",
    "Access",
    "AccessError",
    "Listen",
    "TlsFiles",
    "acl_text",
    "advertised_host",
    "join_line",
    "parse_listen",
    "read_or_create_password",
    "remote_url",
    "server_settings",
    "write_private",
]

ACL_USER = "eventcore"
PASSWORD_NAME = "redis.password"
ACL_NAME = "users.acl"

_WILDCARDS = ("0.0.0.0", "::")


class AccessError(EventcoreError):
    """A listen address, password file or TLS file that cannot be used safely."""


@dataclass(frozen=True)
class Listen:
    """A TCP address to listen on; ``host`` is an IP address."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the address."""
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def wildcard(self) -> bool:
        return self.host in _WILDCARDS

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6; ``*`` or ``0.0.0.0`` for every
    interface). Raises :class:`ValueError` saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT (e.g. 0.0.0.0:6380), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "*":
        host = "0.0.0.0"
    elif host == "localhost":
        host = "127.0.0.1"  # the server binds addresses; a name could resolve to ::1 alone
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be a number from 1 to 65535, got {port_text!r}")
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(
            f"host must be an IP address of this machine, 'localhost' or '*', got {host!r}"
        ) from None
    return Listen(host, port)


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key, and the CA that signed it (if private)."""

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True)
class Access:
    """How the embedded server is reached over TCP. ``password=None`` means no
    authentication (allowed on loopback only, see :meth:`check`)."""

    listen: Listen
    password: str | None
    tls: TlsFiles | None = None

    def check(self) -> None:
        """Refuse what would expose the server: no password beyond loopback,
        TLS files that do not exist."""
        if self.password is None and not self.listen.loopback:
            raise AccessError(
                f"{self.listen} is reachable from other machines; listening without a "
                "password is allowed on a loopback address (127.0.0.1) only",
            )
        if self.tls is not None:
            for what, path in (("certificate", self.tls.cert), ("key", self.tls.key)):
                if not path.is_file():
                    raise AccessError(f"TLS {what} {path} is not a readable file")
            if self.tls.ca is not None and not self.tls.ca.is_file():
                raise AccessError(f"TLS CA certificate {self.tls.ca} is not a readable file")


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def read_or_create_password(data_dir: Path) -> str:
    """The password of the data directory, made (random, 0600) on first use.

    A file others can read is refused rather than used: the password in it
    may have been seen."""
    path = data_dir / PASSWORD_NAME
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        password = secrets.token_urlsafe(24)
        write_private(path, password + "\n")
        return password
    if mode & 0o077:
        raise AccessError(
            f"{path} is readable by others (mode {mode:o}); make it 0600 "
            f"(chmod 600 {path}) or delete it for a new password",
        )
    password = path.read_text().strip()
    if not password:
        raise AccessError(f"{path} is empty; delete it for a new password")
    return password


def acl_text(password: str) -> str:
    """The server's ACL file: ``eventcore`` may do everything with the password
    (stored as its SHA-256); ``default`` is off and has no password."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return (
        f"user {ACL_USER} on #{digest} ~* &* +@all\n"
        "user default off resetpass resetkeys resetchannels -@all\n"
    )


def server_settings(access: Access, acl_file: Path | None) -> dict[str, str]:
    """The server directives for ``access`` (the ACL file as written by the caller)."""
    settings = {"bind": access.listen.host, "protected-mode": "no"}
    if access.password is not None:
        if acl_file is None:
            raise ValueError("a password needs an ACL file")
        settings["aclfile"] = str(acl_file)
    else:
        # Loopback only (Access.check); protected mode would refuse nothing more there.
        settings["protected-mode"] = "yes"
    if access.tls is None:
        return settings | {"port": str(access.listen.port)}
    settings |= {
        "port": "0",
        "tls-port": str(access.listen.port),
        "tls-cert-file": str(access.tls.cert),
        "tls-key-file": str(access.tls.key),
        "tls-auth-clients": "no",
    }
    if access.tls.ca is not None:
        settings["tls-ca-cert-file"] = str(access.tls.ca)
    return settings


def _credentials(password: str | None) -> str:
    return "" if password is None else f"{ACL_USER}:{quote(password, safe='')}@"


def advertised_host(listen: Listen) -> str:
    """The host other machines should use: the listen address, or for a
    wildcard the address of this machine's default route (its hostname
    when it has none)."""
    if not listen.wildcard:
        return listen.host
    family = socket.AF_INET6 if listen.host == "::" else socket.AF_INET
    probe = "2001:db8::1" if family == socket.AF_INET6 else "192.0.2.1"
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))  # UDP: picks a route, sends nothing
            return s.getsockname()[0]
    except OSError:
        return socket.gethostname()


def remote_url(access: Access, host: str) -> str:
    """The URL another machine connects with (``rediss://`` with TLS; the CA
    path is the same on the other machine, the file must be copied there)."""
    scheme = "redis" if access.tls is None else "rediss"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{_credentials(access.password)}{shown}:{access.listen.port}/0"
    if access.tls is not None and access.tls.ca is not None:
        url += f"?ssl_ca_certs={quote(str(access.tls.ca.resolve()), safe='/')}"
    return url


def join_line(url: str, role: str = "worker --gpu") -> str:
    """The shell line that runs a role on another machine against ``url``."""
    return f"REDIS_URL='{url}' eventcore {role}"
