"""Uploaded images: reading the multipart `image` part and its text fields with every check (415, 400, 413), and
decoding the bytes to RGB. The request size limit and the body deadline are dkit.edge.kiosk.bodies'."""

import numpy as np
from fastapi import Request

from dkit.edge.kiosk.bodies import BodyTimeout, BodyTooLarge
from dkit.edge.kiosk.errors import ApiError
from dkit.edge.upload import UploadError, decode_upload


async def read_upload(request: Request, max_upload: int) -> tuple[bytes, dict[str, str]]:
    """The bytes of the multipart part `image` and the form's text fields."""
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
