"""Image cache throughput: 2-megapixel JPEGs served on loopback, cached with 1 and 2 workers,
next to Pillow's decode + re-encode alone on the same files in the same run (goal: ratio >= 0.8).

    python bench/bench_images.py [--images 24] [--rounds 3]

"cached" = safe fetch over HTTP from 127.0.0.1 + validation + decode + EXIF transpose + WebP
re-encode with thumbnail + SHA-256 + write to a local store; "Pillow alone" = `process_image` on
bytes already in memory (the same decode and re-encode). Workers are threads, as in one job
process; Pillow releases the GIL while it decodes and encodes.
"""

from __future__ import annotations

import argparse
import http.server
import io
import os
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from PIL import Image, ImageDraw, ImageFilter

from crm.images.cache import ImageCache
from crm.images.fetch import FetchPolicy, SafeFetcher
from crm.images.process import process_image
from crm.images.storage import LocalStorage

SIZE = (1732, 1155)  # 2.0 megapixels, 3:2


def photo_like(seed: int) -> bytes:
    """A JPEG with gradients, shapes and grain, so codecs work about as hard as on a photo."""
    rnd = random.Random(seed)
    w, h = SIZE
    base = Image.linear_gradient("L").resize(SIZE)
    im = Image.merge("RGB", (base, base.rotate(90).resize(SIZE), Image.new("L", SIZE, rnd.randrange(256))))
    draw = ImageDraw.Draw(im)
    for _ in range(60):
        x, y = rnd.randrange(w), rnd.randrange(h)
        r = rnd.randrange(20, 300)
        draw.ellipse((x - r, y - r, x + r, y + r),
                     fill=(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    im = im.filter(ImageFilter.GaussianBlur(2))
    grain = Image.effect_noise(SIZE, 24).convert("RGB")
    im = Image.blend(im, grain, 0.12)
    out = io.BytesIO()
    im.save(out, "JPEG", quality=88)
    return out.getvalue()


def serve(files: dict[str, bytes]) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802
            body = files[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def rate(fn, items: list, workers: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items))
    return len(items) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many rounds")
    args = parser.parse_args()

    blobs = [photo_like(i) for i in range(args.images)]
    files = {f"/img/{i}.jpg": blob for i, blob in enumerate(blobs)}
    httpd = serve(files)
    base = f"http://127.0.0.1:{httpd.server_port}"
    print(f"{args.images} JPEGs of {SIZE[0]}x{SIZE[1]} ({sum(map(len, blobs)) / len(blobs) / 1024:.0f} KiB avg),"
          f" {os.cpu_count()} CPUs, best of {args.rounds}")
    print(f"{'workers':>7}  {'Pillow alone/s':>14}  {'cached/s':>9}  {'ratio':>6}")
    try:
        for workers in (1, 2):
            alone = cached = 0.0
            with tempfile.TemporaryDirectory() as tmp:
                cache = ImageCache(SafeFetcher(FetchPolicy(allow_loopback=True)), LocalStorage(tmp, base))

                def run(path: str, cache: ImageCache = cache) -> None:
                    cache.cache(base + path)

                try:
                    # Rounds alternate, so load from elsewhere on the machine hits both sides alike;
                    # each cached round starts from an empty store, so every image is really written.
                    for _ in range(args.rounds):
                        alone = max(alone, rate(process_image, blobs, workers))
                        for name in os.listdir(tmp):
                            os.unlink(os.path.join(tmp, name))
                        cached = max(cached, rate(run, list(files), workers))
                finally:
                    cache.close()
            print(f"{workers:>7}  {alone:>14.1f}  {cached:>9.1f}  {cached / alone:>6.2f}")
    finally:
        httpd.shutdown()
        httpd.server_close()


if __name__ == "__main__":
    main()
