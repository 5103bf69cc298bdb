"""The engine side's own errors: what can go wrong with an image, the queue or the device.

`imaging.py`, `engine.py`, `batcher.py` and `registry.py` raise these and know nothing of
HTTP; `errors.py` is the one place that maps each to a status and the JSON error shape.
`code` is the machine-readable name a client sees in `{"error": {"code", ...}}`.
"""

from __future__ import annotations


class ServiceError(Exception):
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(ServiceError):
    """The bytes are not a valid image (bad base64, corrupt or truncated data)."""

    code = "invalid_image"


class UnsupportedImage(ServiceError):
    """An image format (or a non-image) outside the accepted raster formats."""

    code = "unsupported_image"


class TooLarge(ServiceError):
    """Over a size limit: bytes, pixels, images in one request."""

    code = "too_large"


class InvalidInput(ServiceError):
    """The model refused a value it was given (e.g. a mask ratio)."""

    code = "invalid_request"


class UnknownModel(ServiceError):
    """A model id that is not served here."""

    code = "model_not_found"


class NoDecoder(ServiceError):
    """A reconstruction asked of a model served without its decoder."""

    code = "no_decoder"


class NotReady(ServiceError):
    """The models are loading, failed to load, or the server is shutting down."""

    code = "not_ready"


class QueueFull(ServiceError):
    """The queue holds too many images; try again in `retry_after` seconds."""

    code = "queue_full"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before its images were processed."""

    code = "deadline_exceeded"


class OutOfMemory(ServiceError):
    """The device ran out of memory even for a single image."""

    code = "out_of_memory"


class DeviceFailure(ServiceError):
    """Device work failed for a reason that is not the client's (a bug, a driver error)."""

    code = "internal_error"


class UrlRefused(ServiceError):
    """An image URL this server will not fetch: URLs are off, a scheme other than http(s),
    or an address inside a private, loopback, link-local or otherwise non-public network."""

    code = "url_refused"


class UrlFetchFailed(ServiceError):
    """An image URL that could not be fetched: no such host, no connection, an error
    status, too many redirects, or no answer within the time allowed."""

    code = "url_fetch_failed"
