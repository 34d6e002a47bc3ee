"""Who is asking: a console session (cookie) or HTTP Basic credentials, and whether a
state-changing request carries its CSRF token. Shared by the REST API and the console.

A state-changing request (POST) needs the session's CSRF token (form field ``csrf`` or header
``X-CSRF-Token``). With HTTP Basic (scripts: ``curl -u``) the header must be present with any
value: browsers cannot add a custom header to a cross-site request without a CORS preflight,
which this server never grants, so a forged cross-site request is refused even if the browser
cached the credentials.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from starlette.requests import Request

from node.api.auth import LoginThrottle, Sessions, authenticate
from node.config.console import ConsoleUser

__all__ = ["COOKIE", "Caller", "Guard"]

COOKIE = "blindread_session"


@dataclass(frozen=True)
class Caller:
    user: str
    role: str
    csrf: str | None  # the session's token; None for HTTP Basic

    @property
    def operator(self) -> bool:
        return self.role == "operator"


class Guard:
    def __init__(self, users: tuple[ConsoleUser, ...], sessions: Sessions) -> None:
        self.users = users
        self.sessions = sessions
        self.throttle = LoginThrottle()

    def login(self, name: str, password: str) -> ConsoleUser | None:
        """The user if the password is theirs and the name is not locked by failures."""
        if self.throttle.locked(name):
            return None
        user = authenticate(self.users, name, password)
        if user is None:
            self.throttle.failed(name)
        else:
            self.throttle.succeeded(name)
        return user

    def caller(self, request: Request) -> Caller | None:
        s = self.sessions.get(request.cookies.get(COOKIE))
        if s is not None:
            return Caller(s.user, s.role, s.csrf)
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                name, _, pw = base64.b64decode(auth[6:], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            user = self.login(name, pw)
            if user is not None:
                return Caller(user.name, user.role, None)
        return None

    @staticmethod
    def csrf_ok(caller: Caller, request: Request, form_token: str | None = None) -> bool:
        header = request.headers.get("x-csrf-token")
        if caller.csrf is None:  # HTTP Basic: the custom header must be there
            return bool(header)
        given = form_token if form_token is not None else header
        return given is not None and hmac.compare_digest(given, caller.csrf)
