"""What the ingress answers instead of a completion, as OpenAI-style errors.

Each class carries its HTTP status and OpenAI `type`, so the cascade raises what happened and the
ingress's one exception handler writes the response: no status codes are chosen in the middle of
the request path.
"""

from __future__ import annotations

import math
from typing import Any

# When nothing better is known: vLLM queues drain in about a second; a broken tier takes longer.
OVERLOAD_RETRY_AFTER_S = 1.0
UNAVAILABLE_RETRY_AFTER_S = 5.0


class IngressError(Exception):
    """An answer the client gets instead of a completion."""

    status = 500
    kind = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status or type(self).status
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }

    def headers(self) -> dict[str, str] | None:
        if self.retry_after is None:
            return None
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class InvalidRequest(IngressError):
    """400 (or the tier's own 4xx): the request is wrong; `param` names the field."""

    status = 400
    kind = "invalid_request_error"


class ModelNotFound(IngressError):
    """404: the `model` names neither this ModelTier nor one of its tiers."""

    status = 404
    kind = "model_not_found"


class TierOverloaded(IngressError):
    """429: every tier that refused the request was only full (Serve backpressure)."""

    status = 429
    kind = "rate_limit_exceeded"


class TierUnavailable(IngressError):
    """503: no tier could answer (errors, timeouts, open circuits)."""

    status = 503
    kind = "service_unavailable"

    def __init__(self, message: str, retry_after: float = UNAVAILABLE_RETRY_AFTER_S):
        super().__init__(message, retry_after=retry_after)


class DeadlineExceeded(IngressError):
    """504: `requestTimeoutSeconds` passed before any tier answered."""

    status = 504
    kind = "timeout"
