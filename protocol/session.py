"""One WebSocket session's state, sans-IO: what each message may do in each phase.

The connection actor feeds every decoded client message to
:meth:`Session.check`, which either returns the message (go ahead) or
raises :class:`~protocol.messages.ProtocolError` with the documented code
and, where the protocol says so, a close code. The whole policy is the
table :data:`RULES`, one row per (phase, message type)::

    phase      auth           subscribe            unsubscribe   submit          ping
    connected  ok             ok if spectators     ok            auth_required   ok
    authed     already_authed ok                   ok            ok              ok

Beyond the table: at most ``max_subscriptions`` boards at once, and
unsubscribing needs a subscription. After a close nothing is accepted.
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from protocol.messages import (
    Auth,
    ClientMessage,
    CloseCode,
    Ping,
    ProtocolError,
    Submit,
    Subscribe,
    Unsubscribe,
)


class Phase(Enum):
    CONNECTED = "connected"
    AUTHED = "authed"
    CLOSED = "closed"


class Verdict(Enum):
    OK = "ok"
    AUTH_REQUIRED = "auth_required"
    ALREADY_AUTHED = "already_authed"
    SPECTATORS_ONLY_IF_ALLOWED = "spectators"


#: (phase, message type) → verdict; see the module docstring.
RULES: Final[dict[tuple[Phase, type], Verdict]] = {
    (Phase.CONNECTED, Auth): Verdict.OK,
    (Phase.CONNECTED, Subscribe): Verdict.SPECTATORS_ONLY_IF_ALLOWED,
    (Phase.CONNECTED, Unsubscribe): Verdict.OK,
    (Phase.CONNECTED, Submit): Verdict.AUTH_REQUIRED,
    (Phase.CONNECTED, Ping): Verdict.OK,
    (Phase.AUTHED, Auth): Verdict.ALREADY_AUTHED,
    (Phase.AUTHED, Subscribe): Verdict.OK,
    (Phase.AUTHED, Unsubscribe): Verdict.OK,
    (Phase.AUTHED, Submit): Verdict.OK,
    (Phase.AUTHED, Ping): Verdict.OK,
}


class Session:
    """The protocol state of one connection."""

    def __init__(self, *, allow_spectators: bool, max_subscriptions: int) -> None:
        self.phase = Phase.CONNECTED
        self.user_id: str | None = None
        self.subscriptions: set[str] = set()
        self._allow_spectators = allow_spectators
        self._max_subscriptions = max_subscriptions

    def check(self, message: ClientMessage) -> ClientMessage:
        """Return ``message`` if this phase allows it; raise ProtocolError if not."""
        msg_id = message.id if isinstance(message, Submit | Ping) else None
        if self.phase is Phase.CLOSED:
            raise ProtocolError("the session is closed", code="closed", id=msg_id)
        verdict = RULES[(self.phase, type(message))]
        if verdict is Verdict.AUTH_REQUIRED or (
            verdict is Verdict.SPECTATORS_ONLY_IF_ALLOWED and not self._allow_spectators
        ):
            raise ProtocolError(
                'send {"type": "auth", "token": ...} first', code="auth_required", id=msg_id
            )
        if verdict is Verdict.ALREADY_AUTHED:
            raise ProtocolError("this connection is already authenticated", code="already_authed")
        if (
            isinstance(message, Subscribe)
            and message.leaderboard not in self.subscriptions
            and len(self.subscriptions) >= self._max_subscriptions
        ):
            raise ProtocolError(
                f"at most {self._max_subscriptions} subscriptions per connection",
                code="too_many_subscriptions",
            )
        if isinstance(message, Unsubscribe) and message.leaderboard not in self.subscriptions:
            raise ProtocolError(f"not subscribed to {message.leaderboard!r}", code="not_subscribed")
        return message

    def authed(self, user_id: str) -> None:
        self.phase = Phase.AUTHED
        self.user_id = user_id

    def auth_failed(self, reason: str) -> ProtocolError:
        """The error to send, closing with 4001, when authentication fails."""
        self.phase = Phase.CLOSED
        return ProtocolError(reason, code="unauthorized", close=CloseCode.UNAUTHORIZED)

    def subscribed(self, board: str) -> None:
        self.subscriptions.add(board)

    def unsubscribed(self, board: str) -> None:
        self.subscriptions.discard(board)

    def closed(self) -> None:
        self.phase = Phase.CLOSED
