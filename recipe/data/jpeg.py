"""Decode a JPEG only as far as a crop needs: header first, DCT-domain downscaling, then resize.

A crop box is chosen from the image's size, which ``jpeg_shape`` reads from the JPEG header
without decoding. ``decode_crop_resize`` then decodes at the smallest scale 1/s (s in 1, 2, 4,
8: libjpeg-turbo's scaled inverse DCT, the same as Pillow's ``Image.draft``) at which the crop
still has at least the output's pixels in both directions, and resizes the crop to the output
size. The decoder is libjpeg-turbo through ``simplejpeg``, the resize OpenCV's; both release the
GIL. By measurement on ImageNet-sized JPEGs (BENCHMARKS.md, input section) this is faster than
Pillow's decode and resize, and the DCT downscale removes most of the decode work whenever the
crop is at least twice the output size (small output sizes, large images).

Resampling follows OpenCV's advice: pixel-area averaging (``INTER_AREA``, anti-aliased) when the
crop shrinks in both directions, bilinear (``INTER_LINEAR``) when it is enlarged in either.
After the DCT downscale a crop shrinks by less than 2× in its shorter direction.

Bytes that are not a JPEG libjpeg-turbo decodes (a PNG of an image folder or of a TFDS dataset,
a CMYK JPEG) are decoded in full by Pillow instead. Bytes that neither decodes (a truncated or
corrupt file, not an image at all) raise ``UndecodableImageError``.
"""

import io

import cv2
import numpy as np
import simplejpeg
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom, in pixels
DCT_SCALES = (8, 4, 2, 1)

# OpenCV's own thread pool would split every small resize across all cores, competing with the
# loader's parallel workers; the loader parallelises over images instead.
cv2.setNumThreads(1)


class UndecodableImageError(ValueError):
    """Image bytes that neither libjpeg-turbo nor Pillow decode."""


def jpeg_shape(data: bytes) -> tuple[int, int]:
    """``(height, width)`` of a JPEG, read from its header."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return height, width


def image_shape(data: bytes) -> tuple[int, int]:
    """``(height, width)`` of a JPEG or any image Pillow reads, from its header.

    Raises:
        UndecodableImageError: The header is not an image's.
    """
    try:
        return jpeg_shape(data)
    except ValueError:
        pass
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.height, image.width
    except Exception as error:  # Pillow raises many kinds for bytes that are not an image
        raise UndecodableImageError(_reason(error)) from None


def _reason(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _decode_with_pillow(data: bytes, channels: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except Exception as error:  # truncated, corrupt, not an image: Pillow's many kinds
        raise UndecodableImageError(_reason(error)) from None
    return pixels.reshape(*pixels.shape[:2], channels)


def decode_image(data: bytes, scale: int = 1, channels: int = 3) -> tuple[np.ndarray, int]:
    """Decodes image bytes to uint8 ``(H', W', channels)``: a JPEG at DCT scale 1/``scale``
    (``decode``), anything else, or a JPEG libjpeg-turbo refuses, in full by Pillow.

    Returns:
        ``(pixels, the scale they were decoded at)``: ``scale``, or 1 where Pillow decoded.

    Raises:
        UndecodableImageError: Neither decodes the bytes (truncated, corrupt, not an image).
    """
    if data[:2] == b"\xff\xd8":  # JPEG's start-of-image marker
        try:
            return decode(data, scale, channels), scale
        except ValueError:
            pass  # e.g. CMYK, or truncated: Pillow decodes the one, refuses the other
    return _decode_with_pillow(data, channels), 1


def dct_scale(box: Box, size: tuple[int, int]) -> int:
    """The largest s in (8, 4, 2, 1) with the box at least ``size = (height, width)`` at 1/s."""
    left, top, right, bottom = box
    for scale in DCT_SCALES:
        if (right - left) >= scale * size[1] and (bottom - top) >= scale * size[0]:
            return scale
    return 1


def decode(data: bytes, scale: int = 1, channels: int = 3) -> np.ndarray:
    """Decodes a JPEG to uint8 ``(ceil(H/scale), ceil(W/scale), channels)`` (RGB, or gray
    for 1 channel; scale in 1, 2, 4, 8)."""
    colorspace = "GRAY" if channels == 1 else "RGB"
    if scale == 1:
        return simplejpeg.decode_jpeg(data, colorspace)
    height, width = jpeg_shape(data)
    # simplejpeg picks the smallest scaled size at least this large: exactly 1/scale.
    return simplejpeg.decode_jpeg(
        data, colorspace, min_height=-(-height // scale), min_width=-(-width // scale)
    )


def crop_resize(image: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """Resizes ``image[top:bottom, left:right]`` (uint8 ``(H, W, C)``) to ``size = (h, w)``."""
    left, top, right, bottom = box
    crop = image[top:bottom, left:right]
    shrinks = crop.shape[0] >= size[0] and crop.shape[1] >= size[1]
    interpolation = cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR
    resized = cv2.resize(crop, (size[1], size[0]), interpolation=interpolation)
    return resized.reshape(*size, image.shape[2])  # OpenCV drops a single channel axis


def decode_crop_resize(
    data: bytes, box: Box, size: tuple[int, int], channels: int = 3
) -> np.ndarray:
    """The ``box`` of a JPEG resized to ``size``, decoded at the coarsest scale that suffices
    (other images, decoded by Pillow, in full: ``decode_image``).

    At scale 1/s the box's edges are rounded to the nearest pixel of the downscaled image, which
    moves them by at most s/2 original pixels.

    Raises:
        UndecodableImageError: The bytes do not decode.
    """
    image, scale = decode_image(data, dct_scale(box, size), channels)
    if scale > 1:
        box = tuple(round(edge / scale) for edge in box)
    return crop_resize(image, box, size)
