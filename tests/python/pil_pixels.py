"""Writes JPEGs of several kinds with PIL into OUT and decodes each with PIL (libjpeg-turbo), at full
size and, through PIL's `draft` (libjpeg's DCT scaling), at 1/2, 1/4 and 1/8; also decodes the JPEG
files named after OUT. Writes OUT/manifest.json: one record per decode (file, reduction, width,
height, raw: a file of width*height*3 bytes, RGB) for pipe's decoder to be compared against; and,
for the large files, PIL's bilinear resizes to 384x384 as torchvision makes them (squash, and
Resize + CenterCrop), for pipe's `--resize squash|crop` to be measured against.

Kinds: chroma 4:4:4, 4:2:2 and 4:2:0, progressive, restart markers, grayscale, odd sizes (not a
multiple of the 8 or 16 pixel block), and a large image for the reduced decodes.

Usage: pil_pixels.py OUT [JPEG...]
"""
import json
import os
import sys

import numpy as np
from PIL import Image, features


def scene(w, h, seed):
    """A photo-like test picture: gradients, a hard-edged disc, stripes and noise (edges and texture
    are where decoders' IDCT and chroma upsampling differ)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = x * 255 // max(w - 1, 1)
    g = y * 255 // max(h - 1, 1)
    b = ((x // 7 + y // 5) % 2) * 180 + 40
    img = np.stack([r, g, b], -1).astype(np.int32)
    disc = (x - w * 0.6) ** 2 + (y - h * 0.4) ** 2 < (min(w, h) * 0.25) ** 2
    img[disc] = [230, 30, 60]
    img += rng.integers(-25, 26, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    small, big = scene(61, 45, 1), scene(1003, 757, 2)
    written = []
    for name, im, options in [
        ("444.jpg", small, dict(subsampling=0)),
        ("422.jpg", small, dict(subsampling=1)),
        ("420.jpg", small, dict(subsampling=2)),
        ("progressive.jpg", small, dict(subsampling=2, progressive=True)),
        ("restart.jpg", small, dict(subsampling=2, restart_marker_blocks=1)),
        ("gray.jpg", small.convert("L"), {}),
        ("big-420.jpg", big, dict(subsampling=2)),
        ("big-422-restart.jpg", big, dict(subsampling=1, restart_marker_rows=1)),
        ("big-444-progressive.jpg", big, dict(subsampling=0, progressive=True)),
    ]:
        path = os.path.join(out, name)
        im.save(path, quality=87, **options)
        written.append(path)
    # The options took: restart markers present, progressive frames marked SOF2.
    for path in written:
        data = open(path, "rb").read()
        name = os.path.basename(path)
        if "restart" in name:
            assert b"\xff\xd0" in data and b"\xff\xdd" in data, f"{name}: no restart markers"
        if "progressive" in name:
            assert b"\xff\xc2" in data, f"{name}: not progressive"
    records = []

    def record(path, reduction, im):
        im = im.convert("RGB")
        raw = os.path.join(out, f"{os.path.basename(path)}.{reduction}.rgb")
        with open(raw, "wb") as f:
            f.write(np.asarray(im, dtype=np.uint8).tobytes())
        records.append(dict(file=path, reduction=reduction, width=im.size[0], height=im.size[1], raw=raw))

    for path in written + sys.argv[2:]:
        record(path, 1, Image.open(path))
        w, h = Image.open(path).size
        if min(w, h) >= 64:
            for r in (2, 4, 8):
                im = Image.open(path)
                im.draft("RGB", (w // r, h // r))
                assert im.size == (-(-w // r), -(-h // r)), (path, r, im.size)
                record(path, r, im)
    # Resizes to 384, PIL's bilinear (antialiased: its support widens with the scale), as torchvision
    # does them: squash, the whole image to 384x384; crop, torchvision's Resize(384) (shorter side to
    # 384, the other truncated) then CenterCrop(384) (offset rounded).
    resized = []
    s = 384
    for path in written:
        im = Image.open(path).convert("RGB")
        w, h = im.size
        if min(w, h) < s:
            continue
        squash = im.resize((s, s), Image.BILINEAR)
        rw, rh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        left, top = int(round((rw - s) / 2.0)), int(round((rh - s) / 2.0))
        crop = im.resize((rw, rh), Image.BILINEAR).crop((left, top, left + s, top + s))
        for policy, r in (("squash", squash), ("crop", crop)):
            raw = os.path.join(out, f"{os.path.basename(path)}.{policy}{s}.rgb")
            with open(raw, "wb") as f:
                f.write(np.asarray(r, dtype=np.uint8).tobytes())
            resized.append(dict(file=path, policy=policy, size=s, raw=raw))
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(dict(libjpeg_turbo=features.version("libjpeg_turbo"), records=records, resized=resized), f)


if __name__ == "__main__":
    main()
