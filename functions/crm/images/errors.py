"""Typed failures of the image cache: a short `reason` code an operator can filter on."""

from __future__ import annotations


class ImageCacheError(Exception):
    """One image could not be cached. `reason` is a stable snake_case code, `detail` says why."""

    reason: str = "failed"

    def __init__(self, reason: str, detail: str = "", *, status: int | None = None):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail or reason
        # What the image host answered us (reason == "http_status"): a fact about the fetch, not an
        # answer of ours; no image cache failure ever reaches a caller as HTTP.
        self.status = status

    @property
    def retryable(self) -> bool:
        """Worth another attempt later (the host may come back); a refused or invalid image is not."""
        if self.reason == "http_status":
            return self.status is None or self.status == 408 or self.status == 429 or self.status >= 500
        return self.reason in RETRYABLE


#: Reasons that may heal by themselves: network trouble, overloaded hosts, our own storage.
RETRYABLE = frozenset({"timeout", "connect_failed", "dns_failure", "network_error", "protocol_error",
                       "storage_failed"})


class FetchError(ImageCacheError):
    """The download was refused or failed (address policy, network, HTTP, size)."""


class ImageError(ImageCacheError):
    """The bytes are not an image we accept (format, pixels, corrupt)."""


class StorageError(ImageCacheError):
    """The first-party store refused or failed."""

    def __init__(self, detail: str):
        super().__init__("storage_failed", detail)
