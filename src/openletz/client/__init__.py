"""A client of the LetzAI image API, for the hosted LetzAI and for openletz alike.

::

    from openletz.client import Client

    with Client() as client:  # LETZAI_API_KEY and LETZAI_BASE_URL from the environment
        image = client.create("a lighthouse at dusk", width=1600, height=900)
        image = client.wait(image, on_progress=lambda p: print(p.status, p.progress))
        client.download(image, path="lighthouse.png")

It needs only httpx and pydantic: ``pip install openletz`` brings no server.
"""

from openletz.client._client import AsyncClient, Client
from openletz.client._config import DEFAULT_BASE_URL, HOSTED_BASE_URL
from openletz.client._exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ImageFailedError,
    ImageNotReadyError,
    InvalidResponseError,
    NotFoundError,
    OpenLetzError,
    PaymentRequiredError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    WaitTimeoutError,
)
from openletz.client._models import VERSIONS, Image, ImageStatus, Mode, Privacy, Progress

__all__ = [
    "DEFAULT_BASE_URL",
    "HOSTED_BASE_URL",
    "VERSIONS",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConfigurationError",
    "Image",
    "ImageFailedError",
    "ImageNotReadyError",
    "ImageStatus",
    "InvalidResponseError",
    "Mode",
    "NotFoundError",
    "OpenLetzError",
    "PaymentRequiredError",
    "PermissionDeniedError",
    "Privacy",
    "Progress",
    "RateLimitError",
    "ServerError",
    "WaitTimeoutError",
]
