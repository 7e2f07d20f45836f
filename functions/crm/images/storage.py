"""First-party image storage behind one small interface: a local directory or Supabase Storage.

Names are content hashes (`<sha256>.webp`), so writing the same name twice writes the same bytes
and every operation is idempotent.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.parse
from pathlib import Path
from typing import Protocol

import httpx

from crm import config
from crm.errors import ConfigError
from crm.images.errors import StorageError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
CACHE_CONTROL = "31536000"  # a year: content-hash names never change content


class Storage(Protocol):
    def put(self, name: str, data: bytes, content_type: str) -> str:
        """Store `data` under `name` (overwriting) and return its public URL."""

    def exists(self, name: str) -> bool: ...

    def url(self, name: str) -> str:
        """The public URL `name` has (or will have) once stored."""

    @property
    def url_prefix(self) -> str:
        """What every public URL of this store starts with: how first-party URLs are recognised."""


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name) or ".." in name:
        raise StorageError(f"invalid object name {name!r}")
    return name


class LocalStorage:
    """Files in `CRM_STORAGE_DIR`, served by `crm dev` under `${CRM_PUBLIC_URL}/media/`."""

    def __init__(self, directory: str | Path, public_url: str):
        self.directory = Path(directory)
        self.base_url = public_url.rstrip("/") + "/media/"

    def url(self, name: str) -> str:
        return self.base_url + check_name(name)

    @property
    def url_prefix(self) -> str:
        return self.base_url

    def exists(self, name: str) -> bool:
        return (self.directory / check_name(name)).is_file()

    def put(self, name: str, data: bytes, content_type: str) -> str:
        target = self.directory / check_name(name)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a reader (or a crash) never sees half a file.
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror or exc}") from exc
        return self.url(name)


class SupabaseStorage:
    """A public Supabase Storage bucket, through the `supabase` client with the service role key."""

    def __init__(self, url: str, service_role_key: str, bucket: str, *, timeout: float = 20.0):
        import supabase
        from supabase import ClientOptions

        self.http = httpx.Client(timeout=timeout, trust_env=False)
        options = ClientOptions(httpx_client=self.http, auto_refresh_token=False, persist_session=False)
        try:
            client = supabase.create_client(url, service_role_key, options=options)
        except supabase.SupabaseException as exc:
            raise StorageError(f"invalid Supabase settings: {exc.message}") from exc
        self.bucket = client.storage.from_(bucket)

    def close(self) -> None:
        self.http.close()

    def url(self, name: str) -> str:
        return self.bucket.get_public_url(check_name(name))

    @property
    def url_prefix(self) -> str:
        return self.url("x").removesuffix("x")

    def exists(self, name: str) -> bool:
        from storage3.exceptions import StorageApiError

        try:
            return self.bucket.exists(check_name(name))
        except (StorageApiError, httpx.HTTPError) as exc:
            raise StorageError(f"Supabase Storage: {exc}") from exc

    def put(self, name: str, data: bytes, content_type: str) -> str:
        from storage3.exceptions import StorageApiError

        try:
            self.bucket.upload(check_name(name), data, file_options={
                "content-type": content_type, "cache-control": CACHE_CONTROL, "upsert": "true"})
        except (StorageApiError, httpx.HTTPError) as exc:
            raise StorageError(f"Supabase Storage upload of {name}: {exc}") from exc
        return self.url(name)


def _http_url(name: str) -> str:
    value = config.require(name)
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"{name} must be an http(s) base URL like https://crm.example.com, got {value!r}")
    return value


def storage_from_env() -> Storage:
    """Supabase Storage when `SUPABASE_URL` is set, else the local directory (SPEC §5)."""
    if config.env("SUPABASE_URL"):
        supabase_url = _http_url("SUPABASE_URL")
        key = config.require("SUPABASE_SERVICE_ROLE_KEY")
        bucket = config.require("CRM_STORAGE_BUCKET")
        try:
            return SupabaseStorage(supabase_url, key, bucket)
        except StorageError as exc:
            raise ConfigError(f"SUPABASE_URL / SUPABASE_SERVICE_ROLE_KEY: {exc.detail}") from None
    directory = config.env("CRM_STORAGE_DIR") or str(config.data_dir() / "media")
    return LocalStorage(directory, _http_url("CRM_PUBLIC_URL"))
