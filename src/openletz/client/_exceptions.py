"""Every error the SDK raises. The hierarchy::

    OpenLetzError
    ├── ConfigurationError          no API key, or a base URL that is not http(s)
    ├── APIConnectionError          the server could not be reached
    │   └── APITimeoutError         ... or did not answer in time
    ├── InvalidResponseError        an answer that is not what the API sends
    ├── APIError                    the server answered with an error status
    │   ├── BadRequestError         400
    │   ├── AuthenticationError     401
    │   ├── PaymentRequiredError    402
    │   ├── PermissionDeniedError   403
    │   ├── NotFoundError           404
    │   ├── RateLimitError          429 (with retry_after)
    │   └── ServerError             5xx
    ├── WaitTimeoutError            wait() ran out of time (with the last image)
    ├── ImageFailedError            wait() saw the image fail or stop (with the image)
    └── ImageNotReadyError          download() of an image that has no such version (yet)

Every message is one line, fit to show a user as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openletz.client._models import Image

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ImageFailedError",
    "ImageNotReadyError",
    "InvalidResponseError",
    "NotFoundError",
    "OpenLetzError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "WaitTimeoutError",
]


class OpenLetzError(Exception):
    """The base of every error this SDK raises."""


class ConfigurationError(OpenLetzError):
    pass


class APIConnectionError(OpenLetzError):
    pass


class APITimeoutError(APIConnectionError):
    pass


class InvalidResponseError(OpenLetzError):
    pass


class APIError(OpenLetzError):
    """An error status from the server, with the server's own words.

    ``message`` is the body's ``message`` (a list of them is joined), else its
    ``error``, else the body's text; ``error`` is the body's ``error`` or the
    status's reason phrase; ``body`` is the parsed JSON body, when there was one;
    ``retry_after`` the seconds of a ``Retry-After`` header, when there was one.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        error: str = "",
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(
            f"{status_code} {error}: {message}" if error else f"{status_code}: {message}"
        )
        self.status_code = status_code
        self.message = message
        self.error = error
        self.body = body
        self.retry_after = retry_after


class BadRequestError(APIError):
    pass


class AuthenticationError(APIError):
    pass


class PaymentRequiredError(APIError):
    pass


class PermissionDeniedError(APIError):
    pass


class NotFoundError(APIError):
    pass


class RateLimitError(APIError):
    """429; ``retry_after`` says how long the server asked to wait, when it did."""


class ServerError(APIError):
    pass


class WaitTimeoutError(OpenLetzError):
    """``image`` is the last state seen (None when no poll answered)."""

    def __init__(self, message: str, image: Image | None) -> None:
        super().__init__(message)
        self.image = image


class ImageFailedError(OpenLetzError):
    """The image ended ``failed`` or ``interrupted``; ``image`` is its last state and
    ``message`` the server's reason (``progressMessage``), when it gave one."""

    def __init__(self, image: Image) -> None:
        reason = image.progress_message or "no reason given"
        super().__init__(f"image {image.id} {image.status.value}: {reason}")
        self.image = image
        self.message = image.progress_message


class ImageNotReadyError(OpenLetzError):
    def __init__(self, message: str, image: Image) -> None:
        super().__init__(message)
        self.image = image
