"""API tokens, scopes, tenants and stream tickets.

Off by default (``web.auth = false``): every request acts as the anonymous
principal with every scope and the empty tenant. On, a request carries
``Authorization: Bearer <token>``; tokens are random, stored only as their
SHA-256 in Redis and compared in constant time by that digest, and each names
a tenant and scopes (``submit``, ``read``, ``stream``, ``admin``). The tenant
always comes from the token, never from the body.

Browsers cannot set headers on an ``EventSource``: they trade their token for
a *ticket* (``POST /v1/stream/ticket``), an HMAC-signed, short-lived string
carrying the tenant, the expiry and the digest of the token it was traded
for, passed as ``?ticket=``. A ticket only streams, and only while that
token exists: revoking the token ends its tickets at once, and
:meth:`Auth.watch_streams` ends the streams already open with it within a
second.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request

from eventcore.config import WebSettings
from eventcore.log import EventLog
from web.errors import ApiError
from web.feed import FeedHub

__all__ = ["SCOPES", "Auth", "Principal", "TokenInfo", "create_token", "revoke_token"]

SCOPES = ("submit", "read", "stream", "admin")

logger = logging.getLogger("eventcore.web.auth")


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    tenant: str = ""
    scopes: tuple[str, ...] = ("submit", "read", "stream")
    created_at: float = 0.0


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    tenant: str
    scopes: frozenset[str]
    token: str = ""  # the SHA-256 of the token that proved it ("" when auth is off)

    def has(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


ANONYMOUS = Principal(name="anonymous", tenant="", scopes=frozenset(SCOPES))


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def create_token(log: EventLog, name: str, tenant: str, scopes: tuple[str, ...]) -> str:
    """A new token (shown once; only its digest is kept)."""
    for s in scopes:
        if s not in SCOPES:
            raise ValueError(f"unknown scope {s!r}; scopes are {', '.join(SCOPES)}")
    token = "ec_" + secrets.token_urlsafe(32)
    info = TokenInfo(name=name, tenant=tenant, scopes=scopes, created_at=time.time())
    await log.redis.hset(log.keys.api_tokens(), digest(token), msgspec.json.encode(info))
    return token


async def revoke_token(log: EventLog, name: str) -> int:
    """Remove every token named ``name``; returns how many."""
    gone = 0
    for key, raw in (await log.redis.hgetall(log.keys.api_tokens())).items():
        if msgspec.json.decode(raw, type=TokenInfo).name == name:
            gone += await log.redis.hdel(log.keys.api_tokens(), key)
    return gone


class Auth:
    def __init__(self, log: EventLog, settings: WebSettings) -> None:
        self.log = log
        self.enabled = settings.auth
        self.ticket_ttl = settings.ticket_ttl
        self._secret: bytes | None = settings.secret.encode() or None

    async def principal(self, request: Request, scope: str) -> Principal:
        """Who sends ``request``; 401 without a valid token, 403 without ``scope``."""
        if not self.enabled:
            return ANONYMOUS
        header = request.headers.get("authorization", "")
        kind, _, token = header.partition(" ")
        if kind.lower() != "bearer" or not token.strip():
            if scope == "stream" and (ticket := request.query_params.get("ticket")):
                return await self.redeem(ticket)
            raise ApiError(
                401,
                "unauthorized",
                "send Authorization: Bearer <token>",
                {"WWW-Authenticate": "Bearer"},
            )
        key = digest(token.strip())
        info = await self._token(key)
        if info is None:
            raise ApiError(
                401,
                "unauthorized",
                "unknown or revoked token",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        who = Principal(
            name=info.name, tenant=info.tenant, scopes=frozenset(info.scopes), token=key
        )
        if not who.has(scope):
            raise ApiError(403, "forbidden", f"this token lacks the {scope!r} scope")
        return who

    async def watch_streams(self, hub: FeedHub, every: float = 1.0) -> None:
        """End, within ``every`` seconds, the open streams whose token was
        revoked (a ticket's stream included: it streams with its token's
        digest). One HMGET a period for the whole process, however many
        clients stream."""
        key = self.log.keys.api_tokens()
        while True:
            await asyncio.sleep(every)
            tokens = sorted(hub.tokens())
            if not tokens:
                continue
            try:
                found = await self.log.redis.hmget(key, tokens)
            except RedisError as exc:  # streams go on; checked again next period
                logger.warning("could not check the tokens of open streams: %s", exc)
                continue
            if gone := {t for t, raw in zip(tokens, found) if raw is None}:
                ended = hub.revoke(gone)
                logger.info("ended %d stream(s) whose token was revoked", ended)

    async def _token(self, key: str) -> TokenInfo | None:
        raw = await self.log.redis.hget(self.log.keys.api_tokens(), key)
        return None if raw is None else msgspec.json.decode(raw, type=TokenInfo)

    async def secret(self) -> bytes:
        """The signing key: from config, else one random key shared through Redis."""
        if self._secret is None:
            key = self.log.keys.web_secret()
            await self.log.redis.set(key, secrets.token_hex(32), nx=True)
            value = await self.log.redis.get(key)
            self._secret = value if isinstance(value, bytes) else str(value).encode()
        return self._secret

    async def ticket(self, who: Principal) -> tuple[str, float]:
        """A signed ticket that lets a browser stream as ``who`` until it expires."""
        expires = time.time() + self.ticket_ttl
        body = base64.urlsafe_b64encode(
            json.dumps(
                {"n": who.name, "t": who.tenant, "e": round(expires, 3), "d": who.token}
            ).encode()
        ).rstrip(b"=")
        sig = hmac.new(await self.secret(), body, hashlib.sha256).digest()
        return f"{body.decode()}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}", expires

    async def redeem(self, ticket: str) -> Principal:
        body, _, sig = ticket.partition(".")
        want = hmac.new(await self.secret(), body.encode(), hashlib.sha256).digest()
        try:
            got = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, UnicodeDecodeError):
            raise ApiError(401, "unauthorized", "malformed ticket") from None
        if not hmac.compare_digest(got, want):
            raise ApiError(401, "unauthorized", "ticket signature does not match")
        if float(claims.get("e", 0)) < time.time():
            raise ApiError(401, "unauthorized", "ticket expired; ask for a new one")
        # The token it was traded for must still be there and still stream:
        # revoking a token ends its tickets too. (A ticket from before tickets
        # named their token cannot be checked, so it is refused.)
        token = claims.get("d")
        info = await self._token(token) if isinstance(token, str) and token else None
        if info is None or not ({"stream", "admin"} & set(info.scopes)):
            raise ApiError(
                401, "unauthorized", "the token this ticket came from was revoked; sign in again"
            )
        return Principal(
            name=info.name, tenant=info.tenant, scopes=frozenset({"stream"}), token=token
        )
