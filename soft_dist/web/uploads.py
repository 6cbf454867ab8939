"""Photos out of HTTP requests, within limits: `soft-dist serve`'s first line of defence.

A request that is too large, of a type that is not a photo, or whose photo is not an image or has too
many pixels gets a RequestError carrying its HTTP status (413, 415, 411, 422) and a message for people;
it never reaches the replicas that decode and align. Only the photo's header is read here (the pixel
count), so a decompression bomb is refused before anything decodes it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from soft_dist.serve.faces import UNREADABLE

# Content types taken as a photo in a raw body or a multipart part; application/octet-stream (what curl
# --data-binary and many clients send) is looked at like any other body: its header says what it is.
PHOTO_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "image/tiff",
                         "application/octet-stream"})
MULTIPART = "multipart/form-data"

# The status of a photo refused here for its size (one that is no image is serve.faces' UNREADABLE).
TOO_MANY_PIXELS = "too_many_pixels"


class RequestError(Exception):
    """A request refused with HTTP ``status`` and ``message`` (the JSON error's text)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    """max_request_bytes: the whole body (413 above it); max_image_pixels: width x height of one photo as
    its header states it (422 above it; predict's own --max-pixels then decodes it smaller still);
    max_batch_photos: photos in one /predict/batch request (413 above it)."""

    max_request_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    max_batch_photos: int = 32


@dataclass(frozen=True)
class Upload:
    """One photo of a request: ``name`` (the multipart file name, or "upload"), its bytes, and, when the
    photo is refused, ``status`` and ``error`` (then it goes no further)."""

    name: str
    data: bytes
    status: str = ""
    error: str = ""


def media_type(content_type: str | None) -> str:
    """"image/jpeg" of "image/jpeg; charset=..." (lower case; "" when absent)."""
    return (content_type or "").split(";")[0].strip().lower()


def check_length(content_length: str | None, limits: Limits) -> None:
    """411 without a Content-Length (the body's size must be known before it is read), 413 above the limit."""
    if content_length is None:
        raise RequestError(411, "send the photo with a Content-Length header (chunked uploads are not taken)")
    try:
        length = int(content_length)
    except ValueError:
        raise RequestError(400, f"Content-Length {content_length!r} is not a number") from None
    if length > limits.max_request_bytes:
        raise RequestError(413, f"the request has {length:,} bytes, more than the limit of "
                                f"{limits.max_request_bytes:,} (soft-dist serve --max-request-mb)")


def check_type(content_type: str, where: str) -> None:
    """415 for a type that is not a photo."""
    if content_type and content_type not in PHOTO_TYPES:
        raise RequestError(415, f"{where} has type {content_type!r}; send a photo (one of "
                                f"{', '.join(sorted(PHOTO_TYPES))}) or multipart/form-data")


def inspect_photo(name: str, data: bytes, limits: Limits) -> Upload:
    """``data`` as an Upload, refused (status and error set) when it is empty, not an image, or has more
    pixels than the limit; only the header is read."""
    from PIL import Image

    if not data:
        return Upload(name, data, UNREADABLE, "the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.DecompressionBombError as err:
        return Upload(name, data, TOO_MANY_PIXELS, str(err))
    except Exception as err:  # any decoder complaint means the bytes are not a photo we can read
        kind = "not an image file" if isinstance(err, Image.UnidentifiedImageError) else type(err).__name__
        return Upload(name, data, UNREADABLE, f"{kind}: JPEG, PNG, WebP, BMP, GIF or TIFF expected")
    if width * height > limits.max_image_pixels:
        return Upload(name, data, TOO_MANY_PIXELS,
                      f"the photo is {width} x {height} = {width * height:,} pixels, more than the limit of "
                      f"{limits.max_image_pixels:,} (soft-dist serve --max-image-pixels)")
    return Upload(name, data)


async def read_uploads(request, limits: Limits, many: bool) -> list[Upload]:
    """The photos of a starlette ``request``: its raw body (one photo) or the file fields of a multipart
    form (one for /predict, up to ``limits.max_batch_photos`` with ``many``). RequestError when the request
    as a whole is refused; a photo that is refused comes back with its status and error set."""
    check_length(request.headers.get("content-length"), limits)
    content_type = media_type(request.headers.get("content-type"))
    if content_type != MULTIPART:
        if many:
            raise RequestError(415, "/predict/batch takes multipart/form-data with one file field per photo")
        check_type(content_type, "the request body")
        return [inspect_photo("upload", await request.body(), limits)]
    most = limits.max_batch_photos if many else 1
    try:
        async with request.form(max_files=most, max_fields=most + 16) as form:  # closes what it spooled
            return await _form_uploads(form, limits)
    except (HTTPException, MultiPartException) as err:  # starlette refused the form itself
        reason = getattr(err, "detail", None) or getattr(err, "message", None) or str(err)
        if "Too many files" in reason:
            raise RequestError(413, f"more than {most} photo{'s' if most > 1 else ''} in one request"
                                    + ("" if many else " (send several to /predict/batch)")) from None
        raise RequestError(400, f"the multipart form could not be read: {reason}") from None


async def _form_uploads(form, limits: Limits) -> list[Upload]:
    """The file fields of a parsed form as Uploads (422 when it has none, 415 for a part that is no photo)."""
    files = [(key, value) for key, value in form.multi_items() if hasattr(value, "read")]
    if not files:
        raise RequestError(422, "the form has no file field: send the photo as a file (e.g. curl -F photo=@face.jpg)")
    uploads = []
    for key, file in files:
        name = file.filename or key
        check_type(media_type(file.content_type), f"the file {name!r}")
        uploads.append(inspect_photo(name, await file.read(), limits))
    return uploads
