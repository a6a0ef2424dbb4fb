"""Users, passwords (Argon2id via argon2-cffi), server-side sessions and the audit log.

The session cookie carries a random token; the database keeps only its SHA-256, so a copy of the
database lets nobody in. A session ends `session_hours` after login or `idle_minutes` after its
last request, whichever comes first, and at logout.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, insert, select, update

from console.areas import ROLES, Area, parse_area
from console.db import Database
from console.schema import audit, sessions, users
from lifeline.contract.kinds import is_valid_id
from lifeline.errors import LifelineError

_hasher = PasswordHasher()
#: A hash to verify against when the user does not exist, so both cases take the same time.
_DUMMY_HASH = _hasher.hash("lifeline: no such user")
#: Minimum password length.
MIN_PASSWORD = 10
#: Touch `last_seen` at most this often per session (a write per request would be wasteful).
_TOUCH_MS = 30_000


class UserError(LifelineError):
    """A user cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class User:
    """A logged-in person: what they may see (area) and do (role)."""

    username: str
    role: str
    area: Area
    display_name: str = ""

    @property
    def label(self) -> str:
        return self.display_name or self.username


@dataclass(frozen=True, slots=True)
class Session:
    """A valid session: its user and the token forms must echo (CSRF)."""

    user: User
    csrf: str
    expires_at: int


def now_ms() -> int:
    return int(time.time() * 1000)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: object) -> User:
    return User(row.username, row.role, parse_area(row.area), row.display_name)  # type: ignore[attr-defined]


class Accounts:
    """Users, sessions and the audit log in the console's database."""

    def __init__(self, db: Database, *, session_hours: float = 12.0, idle_minutes: float = 60.0) -> None:
        self.db = db
        self.session_ms = int(session_hours * 3_600_000)
        self.idle_ms = int(idle_minutes * 60_000)

    # ------------------------------------------------------------------ users

    def add_user(self, username: str, password: str, *, role: str, area: str, display_name: str = "") -> User:
        """Create a user; UserError if the name is taken or a value is invalid."""
        if not is_valid_id(username):
            raise UserError(f"user name {username!r} must match [A-Za-z0-9._-]{{1,64}}")
        self._check_role(role)
        parsed = parse_area(area)
        self._check_password(password)
        with self.db.write() as conn:
            if conn.execute(select(users.c.username).where(users.c.username == username)).first():
                raise UserError(f"user {username!r} already exists")
            conn.execute(insert(users).values(
                username=username, password_hash=_hasher.hash(password), role=role, area=str(parsed),
                display_name=display_name, disabled=False, created_at=now_ms()))
        return User(username, role, parsed, display_name)

    def set_password(self, username: str, password: str) -> None:
        """Change a password and end the user's sessions."""
        self._check_password(password)
        with self.db.write() as conn:
            done = conn.execute(update(users).where(users.c.username == username)
                                .values(password_hash=_hasher.hash(password))).rowcount
            if not done:
                raise UserError(f"no user {username!r}")
            conn.execute(delete(sessions).where(sessions.c.username == username))

    def set_user(self, username: str, *, role: str | None = None, area: str | None = None,
                 disabled: bool | None = None) -> None:
        """Change role, area or disabled; the user's sessions end (they log in again)."""
        values: dict[str, object] = {}
        if role is not None:
            self._check_role(role)
            values["role"] = role
        if area is not None:
            values["area"] = str(parse_area(area))
        if disabled is not None:
            values["disabled"] = disabled
        with self.db.write() as conn:
            if values and not conn.execute(update(users).where(users.c.username == username).values(**values)).rowcount:
                raise UserError(f"no user {username!r}")
            conn.execute(delete(sessions).where(sessions.c.username == username))

    def list_users(self) -> list[tuple[User, bool]]:
        with self.db.read() as conn:
            rows = conn.execute(select(users).order_by(users.c.username)).all()
        return [(_user(r), bool(r.disabled)) for r in rows]

    @staticmethod
    def _check_role(role: str) -> None:
        if role not in ROLES:
            raise UserError(f"role {role!r}: expected one of {', '.join(ROLES)}")

    @staticmethod
    def _check_password(password: str) -> None:
        if len(password) < MIN_PASSWORD:
            raise UserError(f"password too short: at least {MIN_PASSWORD} characters")

    # ------------------------------------------------------------------ sessions

    def login(self, username: str, password: str) -> tuple[str, Session] | None:
        """A new session token for a right password of an enabled user, else None."""
        with self.db.read() as conn:
            row = conn.execute(select(users).where(users.c.username == username)).first()
        stored = row.password_hash if row is not None else _DUMMY_HASH
        try:
            _hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if row is None or row.disabled:
            return None
        if _hasher.check_needs_rehash(stored):
            with self.db.write() as conn:
                conn.execute(update(users).where(users.c.username == username)
                             .values(password_hash=_hasher.hash(password)))
        token, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(24), now_ms()
        expires = now + self.session_ms
        with self.db.write() as conn:
            conn.execute(delete(sessions).where(sessions.c.expires_at < now))
            conn.execute(insert(sessions).values(token_hash=_token_hash(token), username=username,
                                                 csrf=csrf, created_at=now, last_seen=now,
                                                 expires_at=expires))
        return token, Session(_user(row), csrf, expires)

    def session(self, token: str | None) -> Session | None:
        """The session of a cookie token if it is valid now (and notes the request)."""
        if not token or len(token) > 200:
            return None
        key, now = _token_hash(token), now_ms()
        with self.db.read() as conn:
            row = conn.execute(
                select(sessions, users.c.role, users.c.area, users.c.display_name, users.c.disabled)
                .join(users, users.c.username == sessions.c.username)
                .where(sessions.c.token_hash == key)).first()
        if row is None or row.disabled or now >= row.expires_at or now - row.last_seen > self.idle_ms:
            return None
        if now - row.last_seen > _TOUCH_MS:
            with self.db.write() as conn:
                conn.execute(update(sessions).where(sessions.c.token_hash == key).values(last_seen=now))
        user = User(row.username, row.role, parse_area(row.area), row.display_name)
        return Session(user, row.csrf, min(row.expires_at, now + self.idle_ms))

    def logout(self, token: str | None) -> None:
        if token:
            with self.db.write() as conn:
                conn.execute(delete(sessions).where(sessions.c.token_hash == _token_hash(token)))

    # ------------------------------------------------------------------ audit

    def record(self, username: str | None, action: str, *, target: str = "", outcome: str = "ok",
               detail: str = "", address: str = "") -> None:
        """One line of the audit log."""
        with self.db.write() as conn:
            conn.execute(insert(audit).values(at=now_ms(), username=username, action=action,
                                              target=target[:200], outcome=outcome,
                                              detail=detail[:2000], address=address[:64]))

    def audit_log(self, *, limit: int = 200, username: str | None = None) -> list[dict[str, object]]:
        query = select(audit).order_by(audit.c.id.desc()).limit(limit)
        if username:
            query = query.where(audit.c.username == username)
        with self.db.read() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
