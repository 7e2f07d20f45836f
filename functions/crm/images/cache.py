"""One image from a third-party URL to a first-party URL: fetch, re-encode, store."""

from __future__ import annotations

from dataclasses import dataclass

from crm.images.fetch import FetchPolicy, SafeFetcher
from crm.images.process import ProcessOptions, process_image
from crm.images.storage import Storage, storage_from_env


@dataclass(frozen=True)
class CachedImage:
    source_url: str
    url: str
    thumb_url: str
    width: int
    height: int
    sha256: str


class ImageCache:
    """The pipeline; thread-safe (one fetcher with its connection pool, one storage)."""

    def __init__(self, fetcher: SafeFetcher, storage: Storage, options: ProcessOptions | None = None):
        self.fetcher = fetcher
        self.storage = storage
        self.options = options or ProcessOptions()

    @classmethod
    def from_env(cls) -> ImageCache:
        return cls(SafeFetcher(FetchPolicy.from_env()), storage_from_env(), ProcessOptions.from_env())

    def close(self) -> None:
        self.fetcher.close()
        close = getattr(self.storage, "close", None)
        if close is not None:
            close()

    def cache(self, url: str) -> CachedImage:
        """Raises an ImageCacheError subclass (FetchError, ImageError, StorageError) with a reason."""
        fetched = self.fetcher.fetch(url)
        image = process_image(fetched.body, self.options)
        # Content-hash names: an existing object already holds exactly these bytes.
        if self.storage.exists(image.name) and self.storage.exists(image.thumb_name):
            main_url, thumb_url = self.storage.url(image.name), self.storage.url(image.thumb_name)
        else:
            thumb_url = self.storage.put(image.thumb_name, image.thumb, image.content_type)
            main_url = self.storage.put(image.name, image.data, image.content_type)
        return CachedImage(source_url=url, url=main_url, thumb_url=thumb_url, width=image.width,
                           height=image.height, sha256=image.sha256)
