"""The pixel size of a JPEG, read from its frame header without decoding it.

The DALI loader computes every crop box in numpy before the image is decoded (soft_dist.data.view_params),
so it needs each image's height and width up front. They sit in the SOF ("start of frame") segment, a few
hundred bytes into the file; walking the segment headers to it costs microseconds.
"""

from __future__ import annotations

# SOF0..SOF15 carry the frame size, except C4 (Huffman tables), C8 (reserved) and CC (arithmetic coding).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field: TEM and RST0..RST7.
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])


class JpegHeaderError(ValueError):
    """The bytes are not a JPEG whose frame size can be read."""


def jpeg_size(data) -> tuple[int, int]:
    """(height, width) of the JPEG in ``data`` (bytes or a uint8 numpy array [nbytes]).

    The size is the coded frame size; EXIF orientation is not applied (the sharder writes upright images
    without an orientation tag, and the loaders decode without applying one)."""
    buf = memoryview(data).cast("B")
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        raise JpegHeaderError("not a JPEG: it does not start with the SOI marker FF D8")
    i = 2
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise JpegHeaderError(f"expected a segment marker at byte {i}, found 0x{buf[i]:02X}")
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE_MARKERS:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or entropy-coded data, before any frame header
            break
        length = (buf[i + 2] << 8) | buf[i + 3]
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            height = (buf[i + 5] << 8) | buf[i + 6]
            width = (buf[i + 7] << 8) | buf[i + 8]
            if height == 0 or width == 0:
                raise JpegHeaderError(f"the frame header gives a size of {height}x{width}")
            return height, width
        i += 2 + length
    raise JpegHeaderError("no frame header (SOF segment) before the image data")
