"""The kit's one alpha rule: a transparent image is composited over white, in training and on the device alike.

    from dkit.edge.images.alpha import over_white

    rgb = over_white(rgba)          # (H, W, 4) uint8/uint16, alpha last -> (H, W, 3) uint8, same channel order

numpy only (no OpenCV, no Pillow), so training's decoder processes (dkit.distill.images, Pillow) and the device's
decoder (dkit.edge.images.decode.decode_image, OpenCV) call the same function and give the same pixels: a black
stroke on
a transparent PNG is a black stroke on white for both, never black on black (what dropping the alpha channel gives,
since transparent pixels usually store black). `may_have_alpha` reads a file's header to tell the device's decoder
when to ask OpenCV for the alpha channel at all (IMREAD_UNCHANGED, which skips EXIF orientation, so it is used
only for files with transparency, and `exif_orientation` + `orient` then turn the image upright as OpenCV's colour
decode and training do).
"""

from __future__ import annotations

import numpy as np

BLOCK_PIXELS = 1 << 18  # pixels over_white composites at a time


def over_white(image: np.ndarray) -> np.ndarray:
    """The one alpha rule of the kit, for training and the device alike: (H, W, 4) colour + alpha, uint8 or uint16,
    channels in any order with alpha last (OpenCV's BGRA, Pillow's RGBA) -> (H, W, 3) uint8 in the same order,
    composited over white as a viewer shows a transparent image on a white page (a black stroke on a transparent
    background stays a black stroke on white). A 16-bit image keeps the high byte of each sample first, as
    Pillow and OpenCV's IMREAD_COLOR narrow 16-bit files. Each value is round((c * a + 255 * (255 - a)) / 255),
    exact in integers (no value is ever half-way). (H, W, 3) comes back as it is (uint8)."""
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"over_white takes (H, W, 3 or 4) uint8/uint16, got {image.shape} {image.dtype}")
    if image.shape[2] == 3:
        return (image >> 8).astype(np.uint8) if image.dtype == np.uint16 else image
    # a block of rows at a time: the temporaries stay about BLOCK_PIXELS x 14 bytes whatever the image's size, so
    # an upload's decode costs the decoded BGRA and the result only (a 4096 x 2048 16-bit RGBA PNG of 70 kB: 88 MiB
    # instead of 192 MiB with whole-image temporaries)
    height, width = image.shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, BLOCK_PIXELS // max(width, 1))
    for y in range(0, height, rows):
        block = image[y:y + rows]
        if block.dtype == np.uint16:
            block = (block >> 8).astype(np.uint8)
        a = block[:, :, 3:4].astype(np.uint16)
        flat = block[:, :, :3].astype(np.uint16)  # c * a + 255 * (255 - a) + 127 <= 65152: 16 bits are enough
        flat *= a
        flat += 255 * (255 - a) + 127
        flat //= 255
        out[y:y + rows] = flat
    return out


def may_have_alpha(data: bytes | memoryview | np.ndarray) -> bool:
    """True when the file's header says it can carry transparency that OpenCV decodes: a PNG of colour type
    grey + alpha or RGBA, or with a tRNS chunk before its pixels (palette or RGB; OpenCV ignores a grey tRNS, and
    so does training); a WebP flagged with alpha; any GIF. JPEG, BMP and TIFF: False (decoded as colour). Only
    chunk headers are read (no copy of the file)."""
    m = memoryview(data).cast("B")
    head = bytes(m[:30])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) > 25 and head[25] in (4, 6):
            return True
        return any(kind == b"tRNS" for kind, _, _ in _png_chunks(m))
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        chunk = head[12:16]
        if chunk == b"VP8X":
            return len(head) > 20 and bool(head[20] & 0x10)
        if chunk == b"VP8L":
            return len(head) > 24 and bool(int.from_bytes(head[21:25], "little") >> 28 & 1)
        return False
    return head[:6] in (b"GIF87a", b"GIF89a")


MAX_PNG_CHUNKS = 64  # chunks read before the pixels: real files have a handful (IHDR, PLTE, tRNS, eXIf, iCCP, ...)


def _png_chunks(m: memoryview):
    """(type, data offset, data length) of a PNG's chunks before its pixels (IDAT), at most MAX_PNG_CHUNKS: the
    header walk costs the same small work whatever the upload (a crafted file of 12-byte chunks took 0.4 s of
    Python a 4 MiB upload, ten times its decode, when every chunk was read)."""
    i = 8
    for _ in range(MAX_PNG_CHUNKS):
        if i + 8 > len(m):  # chunks: length, type, data, crc
            return
        length, kind = int.from_bytes(m[i:i + 4], "big"), bytes(m[i + 4:i + 8])
        if kind in (b"IDAT", b"IEND"):
            return
        yield kind, i + 8, length
        i += 12 + length


def exif_orientation(data: bytes | memoryview | np.ndarray) -> int:
    """The EXIF orientation (1-8; 1 when there is none) of a PNG (its eXIf chunk before the pixels, where OpenCV
    reads it) or a WebP (its EXIF chunk), from chunk headers only: what OpenCV's colour decode applies and
    IMREAD_UNCHANGED (the alpha path) does not, so `orient` applies it there."""
    m = memoryview(data).cast("B")
    tiff = None
    if bytes(m[:8]) == b"\x89PNG\r\n\x1a\n":
        tiff = next((bytes(m[at:at + length]) for kind, at, length in _png_chunks(m) if kind == b"eXIf"), None)
    elif bytes(m[:4]) == b"RIFF" and bytes(m[8:12]) == b"WEBP":
        i = 12
        for _ in range(64):  # VP8X, ICCP, ANIM, ALPH, VP8/VP8L, EXIF, XMP: a few chunks, each skipped by its size
            if i + 8 > len(m):
                break
            kind, length = bytes(m[i:i + 4]), int.from_bytes(m[i + 4:i + 8], "little")
            if kind == b"EXIF":
                tiff = bytes(m[i + 8:i + 8 + length])
                break
            i += 8 + length + (length & 1)
    return _tiff_orientation(tiff) if tiff else 1


def _tiff_orientation(t: bytes) -> int:
    """Tag 0x0112 of the first IFD of a TIFF-structured EXIF block (an "Exif\\0\\0" prefix allowed), else 1."""
    if t[:6] == b"Exif\x00\x00":
        t = t[6:]
    order = {b"II*\x00": "little", b"MM\x00*": "big"}.get(t[:4])
    if order is None:
        return 1
    ifd = int.from_bytes(t[4:8], order)
    entries = int.from_bytes(t[ifd:ifd + 2], order) if ifd + 2 <= len(t) else 0
    for k in range(min(entries, 1024)):
        p = ifd + 2 + 12 * k
        if p + 12 > len(t):
            break
        if int.from_bytes(t[p:p + 2], order) == 0x0112:
            value = int.from_bytes(t[p + 8:p + 10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """`image` (H, W, C) turned upright for an EXIF orientation, as OpenCV's decoder does (a view, no copy):
    2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise, 7 transverse, 8 rotate 90 anticlockwise."""
    if orientation >= 5:
        image = image.swapaxes(0, 1)
    flip = {2: (slice(None), slice(None, None, -1)), 3: (slice(None, None, -1), slice(None, None, -1)),
            4: (slice(None, None, -1),), 6: (slice(None), slice(None, None, -1)),
            7: (slice(None, None, -1), slice(None, None, -1)), 8: (slice(None, None, -1),)}.get(orientation)
    return image[flip] if flip else image
