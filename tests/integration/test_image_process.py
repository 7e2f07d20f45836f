"""Images downloaded from 127.0.0.1 through the whole pipeline: fetch, Pillow, local storage."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageCms, ImageFile

from crm.images.cache import ImageCache
from crm.images.errors import ImageError
from crm.images.fetch import FetchPolicy, SafeFetcher
from crm.images.process import ProcessOptions, process_image
from crm.images.storage import LocalStorage
from tests.integration.image_fixtures import (
    BLUE,
    RED,
    ImageServer,
    animated_gif,
    encoded,
    jpeg_with_exif,
    png_bomb,
    two_tone,
)

PUBLIC = "http://media.test"


@pytest.fixture
def server():
    with ImageServer() as srv:
        yield srv


@pytest.fixture
def cache(tmp_path: Path):
    pipeline = ImageCache(SafeFetcher(FetchPolicy(allow_loopback=True)), LocalStorage(tmp_path, PUBLIC))
    yield pipeline
    pipeline.close()


def stored(tmp_path: Path, url: str) -> Image.Image:
    assert url.startswith(PUBLIC + "/media/")
    data = (tmp_path / url.removeprefix(PUBLIC + "/media/")).read_bytes()
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


def close_to(pixel, colour, tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def no_metadata(im: Image.Image) -> None:
    assert not im.getexif(), "EXIF survived"
    for key in ("exif", "icc_profile", "xmp", "XML:com.adobe.xmp", "comment"):
        assert key not in im.info, f"{key} survived"


def test_jpeg_exif_orientation_applied_and_metadata_gone(server, cache, tmp_path) -> None:
    raw = jpeg_with_exif(orientation=6)  # stored 60x40, shown rotated 90° clockwise
    assert Image.open(io.BytesIO(raw)).getexif()[0x010F] == "SecretCam"
    result = cache.cache(server.add("/photo.jpg", raw, "image/jpeg"))
    im = stored(tmp_path, result.url)
    assert im.format == "WEBP"
    assert im.size == (40, 60) == (result.width, result.height)
    # Left half red becomes the top half once turned clockwise.
    assert close_to(im.getpixel((20, 5)), RED)
    assert close_to(im.getpixel((20, 55)), BLUE)
    no_metadata(im)
    assert b"SecretCam" not in (tmp_path / Path(result.url).name).read_bytes()
    assert b"private note" not in (tmp_path / Path(result.url).name).read_bytes()


def test_png_keeps_transparency(server, cache, tmp_path) -> None:
    im = two_tone((80, 50), "RGBA")
    im.putpixel((0, 0), (0, 0, 0, 0))
    result = cache.cache(server.add("/logo.png", encoded(im, "PNG"), "image/png"))
    out = stored(tmp_path, result.url)
    assert out.mode == "RGBA"
    assert out.getpixel((0, 0))[3] == 0
    assert close_to(out.getpixel((70, 25)), BLUE)


def test_webp(server, cache, tmp_path) -> None:
    raw = encoded(two_tone((64, 32)), "WEBP", quality=90)
    result = cache.cache(server.add("/pic.webp", raw, "image/webp"))
    out = stored(tmp_path, result.url)
    assert out.size == (64, 32)
    assert close_to(out.getpixel((60, 16)), BLUE)


def test_animated_gif_keeps_the_first_frame(server, cache, tmp_path) -> None:
    result = cache.cache(server.add("/anim.gif", animated_gif(), "image/gif"))
    out = stored(tmp_path, result.url)
    assert out.size == (50, 30)
    assert getattr(out, "n_frames", 1) == 1
    assert close_to(out.getpixel((25, 15)), RED)


def test_large_image_is_scaled_to_1600_with_a_400_thumbnail(server, cache, tmp_path) -> None:
    raw = encoded(two_tone((3200, 1800)), "JPEG", quality=85)
    result = cache.cache(server.add("/big.jpg", raw, "image/jpeg"))
    assert stored(tmp_path, result.url).size == (1600, 900)
    assert stored(tmp_path, result.thumb_url).size == (400, 225)
    assert result.thumb_url == result.url.replace(".webp", "_thumb.webp")


def test_names_are_content_hashes_and_storing_is_idempotent(server, cache, tmp_path) -> None:
    import hashlib

    raw = encoded(two_tone(), "PNG")
    first = cache.cache(server.add("/a.png", raw, "image/png"))
    second = cache.cache(server.add("/copy-of-a.png", raw, "image/png"))
    assert first.url == second.url
    data = (tmp_path / Path(first.url).name).read_bytes()
    assert Path(first.url).name == hashlib.sha256(data).hexdigest() + ".webp" == first.sha256 + ".webp"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(first.url).name,
                                                                  Path(first.thumb_url).name])


@pytest.mark.parametrize(("name", "body", "reason"), [
    ("truncated.jpg", encoded(two_tone((400, 300)), "JPEG")[:1500], "undecodable"),
    ("text.jpg", b"this is a text file, not a photo\n" * 20, "unsupported_format"),
    ("html.jpg", b"<!doctype html><title>Not found</title>", "unsupported_format"),
    ("image.bmp", encoded(two_tone(), "BMP"), "unsupported_format"),
    ("image.tiff", encoded(two_tone(), "TIFF"), "unsupported_format"),
    ("empty.jpg", b"", "empty"),
])
def test_invalid_files_are_refused(server, cache, tmp_path, name, body, reason) -> None:
    with pytest.raises(ImageError) as info:
        cache.cache(server.add("/" + name, body, "image/jpeg"))
    assert info.value.reason == reason
    assert info.value.retryable is False
    assert list(tmp_path.iterdir()) == []


def test_decompression_bomb_is_refused_before_decoding(server, cache, tmp_path, monkeypatch) -> None:
    bomb = png_bomb(12_000, 12_000)  # 144 megapixels in a few kilobytes
    assert len(bomb) < 100_000
    url = server.add("/bomb.png", bomb, "image/png")
    # "Before decoding" observed directly, not by a wall-clock guess: Pillow decodes pixels only in
    # ImageFile.load(), which records every call here and then does its real work.
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def load(im: ImageFile.ImageFile):
        decoded.append(im.size)
        return real_load(im)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(ImageError) as info:
        cache.cache(url)
    assert info.value.reason == "too_many_pixels"
    assert decoded == []
    assert list(tmp_path.iterdir()) == []
    # The spy does see decoding: a small image goes through load().
    cache.cache(server.add("/ok.png", encoded(two_tone(), "PNG"), "image/png"))
    assert two_tone().size in decoded


def test_pixel_cap_is_checked_from_the_header() -> None:
    bomb = png_bomb(8_000, 8_000)  # 64 MP: under Pillow's own limit, over ours
    with pytest.raises(ImageError) as info:
        process_image(bomb, ProcessOptions(max_pixels=50_000_000))
    assert info.value.reason == "too_many_pixels"
    assert "8000x8000" in info.value.detail


def test_pillow_bomb_warning_is_an_error_too() -> None:
    """With our cap out of the way, Pillow's DecompressionBombWarning (not just the Error) refuses."""
    bomb = png_bomb(10_000, 10_000)  # 100 MP: Pillow warns above ~89 MP, errors above ~179 MP
    with pytest.raises(ImageError) as info:
        process_image(bomb, ProcessOptions(max_pixels=10**10))
    assert info.value.reason == "too_many_pixels"


def test_icc_profile_is_applied_then_dropped() -> None:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    raw = encoded(two_tone(), "JPEG", icc_profile=profile)
    assert Image.open(io.BytesIO(raw)).info["icc_profile"]
    out = Image.open(io.BytesIO(process_image(raw).data))
    no_metadata(out)
    assert close_to(out.getpixel((5, 20)), RED)


def test_jpeg_output_option() -> None:
    result = process_image(encoded(two_tone((50, 50), "RGBA"), "PNG"), ProcessOptions(output="jpeg"))
    out = Image.open(io.BytesIO(result.data))
    assert (out.format, out.mode, result.content_type) == ("JPEG", "RGB", "image/jpeg")
    assert result.name.endswith(".jpg") and result.thumb_name.endswith("_thumb.jpg")
    no_metadata(out)


def test_16_bit_greyscale_is_scaled_not_clipped() -> None:
    raw = encoded(Image.new("I;16", (40, 30), 30000), "PNG")  # 30000/65535 is a mid grey
    out = Image.open(io.BytesIO(process_image(raw).data))
    assert close_to(out.getpixel((5, 5)), (117, 117, 117), tolerance=4)
