"""First-party storage: the local directory (served by `crm dev`) and Supabase Storage.

The Supabase adapter talks, through the real `supabase` client, to a local server that speaks the
Storage API routes it uses: upload (POST/PUT /storage/v1/object/<bucket>/<path>), object info
(GET /storage/v1/object/info/<bucket>/<path>) and the public URL
(GET /storage/v1/object/public/<bucket>/<path>).
"""

from __future__ import annotations

from pathlib import Path

import flask
import httpx
import pytest

from crm.errors import ConfigError
from crm.images.errors import StorageError
from crm.images.storage import LocalStorage, SupabaseStorage, storage_from_env
from crm.tools.devserver import root_app
from tests.helpers import LiveServer, refused_port

KEY = "service-role-key-for-tests"
NAME = "3f" * 32 + ".webp"


# -- local directory ------------------------------------------------------------------------------
def test_local_put_exists_url(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "media", "http://127.0.0.1:8080/")
    assert store.exists(NAME) is False
    url = store.put(NAME, b"RIFF....WEBP", "image/webp")
    assert url == f"http://127.0.0.1:8080/media/{NAME}" == store.url(NAME)
    assert store.exists(NAME) is True
    assert (tmp_path / "media" / NAME).read_bytes() == b"RIFF....WEBP"
    store.put(NAME, b"RIFF....WEBP", "image/webp")  # idempotent
    assert [p.name for p in (tmp_path / "media").iterdir()] == [NAME]


@pytest.mark.parametrize("name", ["../escape.webp", "a/b.webp", ".hidden", "", "x" * 201, "a\x00.webp",
                                  "a b.webp", "/abs.webp"])
def test_names_that_could_escape_are_refused(tmp_path: Path, name: str) -> None:
    store = LocalStorage(tmp_path, "http://127.0.0.1:8080")
    with pytest.raises(StorageError):
        store.put(name, b"x", "image/webp")
    assert list(tmp_path.iterdir()) == []


def test_local_write_failure_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    store = LocalStorage(blocker / "media", "http://127.0.0.1:8080")
    with pytest.raises(StorageError) as info:
        store.put(NAME, b"x", "image/webp")
    assert info.value.reason == "storage_failed"
    assert info.value.retryable is True


def test_crm_dev_serves_the_local_store(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path, "http://127.0.0.1:8080")
    store.put(NAME, b"RIFF....WEBP", "image/webp")
    client = root_app(tmp_path).test_client()
    resp = client.get(f"/media/{NAME}")
    assert resp.status_code == 200
    assert resp.data == b"RIFF....WEBP"
    assert resp.headers["Content-Type"] == "image/webp"
    assert "immutable" in resp.headers["Cache-Control"]
    resp.close()
    assert client.get("/media/missing.webp").status_code == 404


# -- environment ----------------------------------------------------------------------------------
def test_storage_from_env_picks_local_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY", "CRM_STORAGE_BUCKET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CRM_STORAGE_DIR", str(tmp_path))
    monkeypatch.setenv("CRM_PUBLIC_URL", "http://crm.test")
    store = storage_from_env()
    assert isinstance(store, LocalStorage)
    assert store.url(NAME) == f"http://crm.test/media/{NAME}"
    monkeypatch.delenv("CRM_PUBLIC_URL")
    with pytest.raises(ConfigError, match="CRM_PUBLIC_URL"):
        storage_from_env()


def test_storage_from_env_supabase_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("SUPABASE_SERVICE_ROLE_KEY", raising=False)
    with pytest.raises(ConfigError, match="SUPABASE_SERVICE_ROLE_KEY"):
        storage_from_env()
    monkeypatch.setenv("SUPABASE_SERVICE_ROLE_KEY", KEY)
    monkeypatch.delenv("CRM_STORAGE_BUCKET", raising=False)
    with pytest.raises(ConfigError, match="CRM_STORAGE_BUCKET"):
        storage_from_env()
    monkeypatch.setenv("CRM_STORAGE_BUCKET", "images")
    store = storage_from_env()
    try:
        assert isinstance(store, SupabaseStorage)
        assert store.url(NAME) == f"http://127.0.0.1:9/storage/v1/object/public/images/{NAME}"
    finally:
        store.close()


# -- Supabase Storage (local fake of the Storage API) ---------------------------------------------
def storage_api() -> tuple[flask.Flask, dict[str, dict]]:
    """The Storage API routes the adapter uses, with Supabase's error bodies."""
    app = flask.Flask("fake-supabase-storage")
    objects: dict[str, dict] = {}

    def error(status: int, code: str, message: str) -> flask.Response:
        return flask.jsonify({"statusCode": str(status), "error": code, "message": message}), status

    def authorised() -> bool:
        return (flask.request.headers.get("Authorization") == f"Bearer {KEY}"
                and flask.request.headers.get("apikey") == KEY)

    @app.route("/storage/v1/object/<bucket>/<path:name>", methods=["POST", "PUT"])
    def upload(bucket: str, name: str):
        if not authorised():
            return error(403, "Unauthorized", "invalid signature")
        if bucket != "images":
            return error(404, "Bucket not found", "Bucket not found")
        key = f"{bucket}/{name}"
        upsert = flask.request.headers.get("x-upsert") == "true"
        if flask.request.method == "POST" and key in objects and not upsert:
            return error(409, "Duplicate", "The resource already exists")
        part = flask.request.files["file"]
        objects[key] = {"data": part.read(), "content_type": part.mimetype,
                        "cache_control": flask.request.form.get("cacheControl")}
        return flask.jsonify({"Key": key, "Id": name})

    @app.get("/storage/v1/object/info/<bucket>/<path:name>")
    def info(bucket: str, name: str):
        if not authorised():
            return error(403, "Unauthorized", "invalid signature")
        obj = objects.get(f"{bucket}/{name}")
        if obj is None:
            return error(404, "not_found", "Object not found")
        return flask.jsonify({"name": name, "size": len(obj["data"]), "content_type": obj["content_type"]})

    @app.get("/storage/v1/object/public/<bucket>/<path:name>")
    def public(bucket: str, name: str):
        obj = objects.get(f"{bucket}/{name}")
        if obj is None:
            return error(404, "not_found", "Object not found")
        return flask.Response(obj["data"], content_type=obj["content_type"],
                              headers={"Cache-Control": f"max-age={obj['cache_control']}"})

    return app, objects


@pytest.fixture
def supabase_server():
    app, objects = storage_api()
    with LiveServer(app) as server:
        yield server, objects


def test_supabase_upload_exists_and_public_url(supabase_server) -> None:
    server, objects = supabase_server
    store = SupabaseStorage(server.url, KEY, "images")
    try:
        assert store.exists(NAME) is False
        url = store.put(NAME, b"RIFF....WEBP", "image/webp")
        assert url == f"{server.url}/storage/v1/object/public/images/{NAME}"
        assert store.exists(NAME) is True
        assert objects[f"images/{NAME}"]["content_type"] == "image/webp"
        assert objects[f"images/{NAME}"]["cache_control"] == "31536000"
        # Upsert: storing the same content-hash name again succeeds.
        assert store.put(NAME, b"RIFF....WEBP", "image/webp") == url
        public = httpx.get(url, trust_env=False)
        assert public.status_code == 200
        assert public.content == b"RIFF....WEBP"
        assert public.headers["content-type"] == "image/webp"
    finally:
        store.close()


def test_supabase_refusals_are_storage_errors(supabase_server) -> None:
    server, objects = supabase_server
    wrong_key = SupabaseStorage(server.url, "not-the-key", "images")
    wrong_bucket = SupabaseStorage(server.url, KEY, "nope")
    try:
        with pytest.raises(StorageError, match="invalid signature"):
            wrong_key.put(NAME, b"x", "image/webp")
        with pytest.raises(StorageError):
            wrong_key.exists(NAME)
        with pytest.raises(StorageError, match="Bucket not found"):
            wrong_bucket.put(NAME, b"x", "image/webp")
    finally:
        wrong_key.close()
        wrong_bucket.close()
    assert objects == {}


def test_supabase_unreachable_is_a_storage_error() -> None:
    with refused_port() as port:
        store = SupabaseStorage(f"http://127.0.0.1:{port}", KEY, "images")
        try:
            with pytest.raises(StorageError) as info:
                store.put(NAME, b"x", "image/webp")
        finally:
            store.close()
    assert info.value.retryable is True


def test_supabase_rejects_a_bad_url() -> None:
    with pytest.raises(StorageError, match="invalid Supabase settings"):
        SupabaseStorage("not a url", KEY, "images")
