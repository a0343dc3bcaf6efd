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
"""

import cv2
import numpy as np
import simplejpeg

Box = tuple[int, int, int, int]  # left, top, right, bottom, in pixels
DCT_SCALES = (8, 4, 2, 1)

# OpenCV's own thread pool would split every small resize across all cores, competing with the
# loader's parallel workers; the loader parallelises over images instead.
cv2.setNumThreads(1)


def jpeg_shape(data: bytes) -> tuple[int, int]:
    """``(height, width)`` of a JPEG, read from its header."""
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return height, width


def dct_scale(box: Box, size: tuple[int, int]) -> int:
    """The largest s in (8, 4, 2, 1) with the box at least ``size = (height, width)`` at 1/s."""
    left, top, right, bottom = box
    for scale in DCT_SCALES:
        if (right - left) >= scale * size[1] and (bottom - top) >= scale * size[0]:
            return scale
    return 1


def decode(data: bytes, scale: int = 1) -> np.ndarray:
    """Decodes a JPEG to uint8 RGB ``(ceil(H/scale), ceil(W/scale), 3)`` (scale in 1, 2, 4, 8)."""
    if scale == 1:
        return simplejpeg.decode_jpeg(data, "RGB")
    height, width = jpeg_shape(data)
    # simplejpeg picks the smallest scaled size at least this large: exactly 1/scale.
    return simplejpeg.decode_jpeg(
        data, "RGB", min_height=-(-height // scale), min_width=-(-width // scale)
    )


def crop_resize(image: np.ndarray, box: Box, size: tuple[int, int]) -> np.ndarray:
    """Resizes ``image[top:bottom, left:right]`` (uint8 ``(H, W, C)``) to ``size = (h, w)``."""
    left, top, right, bottom = box
    crop = image[top:bottom, left:right]
    shrinks = crop.shape[0] >= size[0] and crop.shape[1] >= size[1]
    interpolation = cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR
    resized = cv2.resize(crop, (size[1], size[0]), interpolation=interpolation)
    return resized.reshape(*size, image.shape[2])  # OpenCV drops a single channel axis


def decode_crop_resize(data: bytes, box: Box, size: tuple[int, int]) -> np.ndarray:
    """The ``box`` of a JPEG resized to ``size``, decoded at the coarsest scale that suffices.

    At scale 1/s the box's edges are rounded to the nearest pixel of the downscaled image, which
    moves them by at most s/2 original pixels.
    """
    scale = dct_scale(box, size)
    image = decode(data, scale)
    if scale > 1:
        box = tuple(round(edge / scale) for edge in box)
    return crop_resize(image, box, size)
