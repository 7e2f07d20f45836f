"""Decode an untrusted image under strict limits and re-encode it clean.

Only JPEG, PNG, WebP and GIF (first frame) are opened; the pixel count is checked from the header
before any pixel is decoded, and Pillow's own DecompressionBombWarning is an error. EXIF
orientation is applied to the pixels, then everything else (EXIF, GPS, XMP, ICC, comments) is
dropped: the output is a fresh WebP (or JPEG) at most `max_side` px, plus a thumbnail. The file
name is the SHA-256 of the encoded image, so the same picture is stored once.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from crm import config
from crm.errors import ConfigError
from crm.images.errors import ImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
OUTPUT_FORMATS = {"webp": ("WEBP", "image/webp", "webp"), "jpeg": ("JPEG", "image/jpeg", "jpg")}


@dataclass(frozen=True)
class ProcessOptions:
    max_pixels: int = 50_000_000  # a 48 MP phone photo passes; decoding stays within a few hundred MB
    max_side: int = 1600
    thumb_side: int = 400
    output: str = "webp"
    quality: int = 82
    thumb_quality: int = 75

    @classmethod
    def from_env(cls) -> ProcessOptions:
        output = (config.env("CRM_IMAGE_FORMAT", "webp") or "webp").lower()
        if output not in OUTPUT_FORMATS:
            raise ConfigError(f"CRM_IMAGE_FORMAT must be webp or jpeg, got {output!r}")
        max_pixels = config.env_int("CRM_IMAGE_MAX_PIXELS", 50_000_000)
        if max_pixels < 1:
            raise ConfigError(f"CRM_IMAGE_MAX_PIXELS must be at least 1, got {max_pixels}")
        return cls(max_pixels=max_pixels, output=output)


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes
    thumb: bytes
    content_type: str
    name: str  # <sha256 of data>.<ext>
    thumb_name: str  # <sha256 of data>_thumb.<ext>: found from the main name, derived from its content
    width: int
    height: int
    source_format: str
    source_width: int
    source_height: int

    @property
    def sha256(self) -> str:
        return self.name.split(".", 1)[0]


_SRGB = ImageCms.createProfile("sRGB")


def process_image(raw: bytes, options: ProcessOptions | None = None) -> ProcessedImage:
    """Validate and re-encode `raw`; raises ImageError with a reason code when refused."""
    options = options or ProcessOptions()
    if not raw:
        raise ImageError("empty", "no bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
        except UnidentifiedImageError:
            raise ImageError("unsupported_format", "not a JPEG, PNG, WebP or GIF image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError("too_many_pixels", str(exc)) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageError("undecodable", str(exc) or "invalid image header") from None
        with im:
            source_format = im.format or "?"
            source_w, source_h = im.size
            if source_w <= 0 or source_h <= 0:
                raise ImageError("undecodable", "image without pixels")
            if source_w * source_h > options.max_pixels:
                raise ImageError("too_many_pixels",
                                 f"{source_w}x{source_h} is over {options.max_pixels} pixels")
            try:
                if source_format == "JPEG":
                    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers max_side.
                    im.draft("RGB", (options.max_side, options.max_side))
                im.load()  # GIF and WebP: the first frame only
                picture = _normalised(im)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageError("too_many_pixels", str(exc)) from None
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise ImageError("undecodable", str(exc) or "corrupt image data") from None

    fmt, content_type, ext = OUTPUT_FORMATS[options.output]
    picture.thumbnail((options.max_side, options.max_side), Image.Resampling.LANCZOS)
    data = _encode(picture, fmt, options.quality)
    thumb_picture = picture.copy()
    thumb_picture.thumbnail((options.thumb_side, options.thumb_side), Image.Resampling.LANCZOS)
    thumb = _encode(thumb_picture, fmt, options.thumb_quality)
    digest = hashlib.sha256(data).hexdigest()
    return ProcessedImage(
        data=data, thumb=thumb, content_type=content_type, name=f"{digest}.{ext}",
        thumb_name=f"{digest}_thumb.{ext}", width=picture.width, height=picture.height,
        source_format=source_format, source_width=source_w, source_height=source_h,
    )


def _normalised(im: Image.Image) -> Image.Image:
    """Upright pixels in RGB or RGBA (sRGB), with no metadata attached."""
    icc = im.info.get("icc_profile")
    upright = ImageOps.exif_transpose(im) or im
    if upright.mode.startswith("I"):
        # 16-bit greyscale PNG: scale to 8 bits (a plain conversion would clip it to white).
        upright = upright.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    has_alpha = upright.mode in ("RGBA", "LA", "PA") or (
        upright.mode == "P" and "transparency" in upright.info) or "transparency" in upright.info
    picture = upright.convert("RGBA" if has_alpha else "RGB")
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            picture = ImageCms.profileToProfile(picture, source, _SRGB, outputMode=picture.mode)
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # an unusable profile: keep the pixels as they are
    picture.info.clear()
    return picture


def _encode(picture: Image.Image, fmt: str, quality: int) -> bytes:
    out = io.BytesIO()
    if fmt == "JPEG":
        if picture.mode != "RGB":
            flat = Image.new("RGB", picture.size, (255, 255, 255))
            flat.paste(picture, mask=picture.getchannel("A"))
            picture = flat
        picture.save(out, "JPEG", quality=quality, optimize=True, progressive=True)
    else:
        picture.save(out, "WEBP", quality=quality, method=4)
    return out.getvalue()
