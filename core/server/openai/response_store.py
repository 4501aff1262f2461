"""Recent Responses-API answers kept in memory, so ``previous_response_id`` can continue a conversation.

The store is bounded (``CORRAL_RESPONSES_KEPT``): when full, the least recently stored or read response
goes. It lives as long as the server process; a restarted server knows no earlier ids, as OpenAI's API
forgets responses after their retention period.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from corral.errors import CorralError


class UnknownResponse(CorralError):
    """A response id the store does not hold (never stored, ``store: false``, evicted, or deleted)."""

    status_code = 404

    def __init__(self, response_id: str, param: str | None = None) -> None:
        what = "Previous response" if param == "previous_response_id" else "Response"
        super().__init__(f"{what} with id '{response_id}' not found.")
        self.param = param
        self.code = "previous_response_not_found" if param == "previous_response_id" else None


@dataclass(frozen=True)
class StoredResponse:
    """A response object as it was answered, and its conversation: every input item up to it
    (earlier responses' included) followed by its own output items."""

    response: dict[str, Any]
    conversation: list[dict[str, Any]]


class ResponseStore:
    """At most ``limit`` responses by id (0 keeps none); the event loop is its only user."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._held)

    def put(self, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        if self.limit <= 0:
            return
        rid = response["id"]
        self._held[rid] = StoredResponse(copy.deepcopy(response), copy.deepcopy(conversation))
        self._held.move_to_end(rid)
        while len(self._held) > self.limit:
            self._held.popitem(last=False)

    def get(self, response_id: str, param: str | None = None) -> StoredResponse:
        """The stored response (a copy the caller may change); UnknownResponse (404) if it is not held."""
        held = self._held.get(response_id)
        if held is None:
            raise UnknownResponse(response_id, param)
        self._held.move_to_end(response_id)
        return StoredResponse(copy.deepcopy(held.response), copy.deepcopy(held.conversation))

    def delete(self, response_id: str) -> None:
        if self._held.pop(response_id, None) is None:
            raise UnknownResponse(response_id)
