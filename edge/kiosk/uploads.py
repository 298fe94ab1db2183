"""Uploaded images: reading the multipart `image` part and its text fields with every check (415, 400, 413), and
decoding the bytes to RGB: `decode_pooled` in the kiosk's decoder processes under their time budget (the routes),
`decode` in this process (no budget: tests and tools). The request size limit and the body deadline are
dkit.edge.kiosk.bodies'."""

import numpy as np
from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from dkit.edge.images.decode import UploadError, decode_upload
from dkit.edge.kiosk.bodies import BodyTimeout, BodyTooLarge
from dkit.edge.kiosk.decoder import DecoderUnavailable, DecodeTimeout
from dkit.edge.kiosk.errors import ApiError
from dkit.edge.kiosk.state import KioskState

DECODER_RETRY = 2.0  # seconds a client is asked to wait when no decoder process is ready


async def read_upload(request: Request, max_upload: int) -> tuple[bytes, dict[str, str]]:
    """The bytes of the multipart part `image` and the form's text fields (its size and its deadlines: BodyLimit's,
    BodyTooLarge / BodyTimeout raised through)."""
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise ApiError(415, f"send the image as multipart/form-data (field 'image'), not {ctype or 'nothing'}")
    try:
        form = await request.form(max_files=1, max_fields=8)
    except (BodyTooLarge, BodyTimeout):
        raise
    except Exception as e:  # python-multipart's own errors: malformed body, too many parts
        raise ApiError(400, f"malformed multipart body ({e})") from e
    image = form.get("image")
    if image is None or isinstance(image, str):
        raise ApiError(400, "the multipart body has no file field 'image'")
    part_type = (image.content_type or "").split(";")[0].strip()
    if part_type and not (part_type.startswith("image/") or part_type == "application/octet-stream"):
        raise ApiError(415, f"the 'image' part is {part_type}, not an image")
    data = await image.read(max_upload + 1)
    if len(data) > max_upload:
        raise ApiError(413, f"the image is over {max_upload:,} bytes")
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    await form.close()
    return data, fields


def decode(data: bytes) -> np.ndarray:
    """The uploaded bytes as an RGB image; a bad upload is an ApiError with its status."""
    try:
        return decode_upload(data)
    except UploadError as e:
        raise ApiError(e.status, e.message) from e


async def decode_pooled(state: KioskState, data: bytes) -> np.ndarray:
    """The uploaded bytes as an RGB image, decoded by the kiosk's decoder processes (dkit.edge.kiosk.decoder): a
    bad upload is an ApiError with its status, a decode past `decode_timeout` seconds a 400 (counted as
    "slow_decode"), no decoder ready a 503. A state without decoder processes decodes here, in a thread."""
    if state.decoder is None:
        return await run_in_threadpool(decode, data)
    try:
        return await run_in_threadpool(state.decoder.decode, data)
    except DecodeTimeout as e:
        state.stats.count("slow_decode")
        raise ApiError(e.status, e.message) from e
    except UploadError as e:
        raise ApiError(e.status, e.message) from e
    except DecoderUnavailable as e:
        raise ApiError(503, f"{e}: try again in a moment", retry_after=DECODER_RETRY) from e
