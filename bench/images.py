"""Reading any image a dataset ships as RGB uint8 pixels: every size (1x1 to many thousand pixels),
every mode PIL opens (L, P, RGBA, LA, CMYK, 1, I;16, I, F), EXIF orientation applied, the format
read from the content (PNG bytes behind a `.jpg` name are common in scraped dumps). A file that
cannot be decoded whole (truncated, not an image, a decompression bomb) is one `BadImage` error
naming it: a half-decoded image is never used. `encode_readable` runs an image encoder on what can
be read, for runs that skip unreadable images instead of stopping (`--set skip_bad_images=true`)."""
import os

import numpy as np

from bench.errors import BenchError

MAX_ASPECT = 20  # longer / shorter edge kept by `cap_aspect`: ViLT's processor (shorter edge 384,
# longer at most 640, multiples of 32) turns a shorter edge below 640 / 20 = 32 into 0, and CLIP's
# shorter-edge resize turns a 1 x 5000 strip into a 224 x 1,120,000 one before cropping its centre


class BadImage(BenchError):
    """An image that cannot be decoded (truncated, not an image, a malformed array)."""


def load_image(image) -> np.ndarray:
    """A path, PIL image or array -> HxWx3 uint8 RGB array."""
    from PIL import Image
    if isinstance(image, (str, os.PathLike)):
        return np.asarray(rgb(open_image(image)))
    if isinstance(image, Image.Image):
        return np.asarray(rgb(image))
    array = np.asarray(image)
    if array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        return array if array.ndim == 3 else np.repeat(array[:, :, None], 3, axis=2)  # the common cases: no copy via PIL
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    try:
        return np.asarray(rgb(Image.fromarray(array)))
    except (TypeError, ValueError) as e:
        raise BadImage(f"cannot read an image array of shape {array.shape} and dtype {array.dtype}: {e}") from None


def open_image(path) -> "Image.Image":
    """The decoded image at `path`, EXIF orientation applied."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as im:  # a decoded copy: a truncated file fails here, not half-way into a batch
            return ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # OSError: unreadable, truncated, not an image (UnidentifiedImageError); the others: corrupt headers
        raise BadImage(f"cannot read image {path}: {e}") from None


def rgb(im) -> "Image.Image":
    """`im` as 8-bit RGB: transparency composited over white (as transformers' `convert_to_rgb`),
    16-bit and 32-bit values scaled to 8 bits (PIL's own conversion clips them at 255)."""
    from PIL import Image
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or values.max(initial=0) > 255:  # 16-bit content (PNG 16-bit grey opens as "I")
            values = values / 257
        im = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def cap_aspect(im, max_aspect: float = MAX_ASPECT):
    """`im` (PIL) with its longer edge centre-cropped to at most `max_aspect` x the shorter one, so
    a shorter-edge resize neither collapses the shorter edge nor inflates the longer one."""
    w, h = im.size
    if max(w, h) <= max_aspect * min(w, h):
        return im
    if w > h:
        keep = int(max_aspect * h)
        left = (w - keep) // 2
        return im.crop((left, 0, left + keep, h))
    keep = int(max_aspect * w)
    top = (h - keep) // 2
    return im.crop((0, top, w, top + keep))


def encode_readable(encode, images: list, skip_bad: bool) -> tuple:
    """(`encode(images)`, {}); with `skip_bad`, when an image cannot be decoded, (`encode` of the
    readable ones or None when there is none, {position of each unreadable one: its error}).
    Unreadable images are rare, so they are looked for (by decoding the images once more) only
    when `encode` hit one."""
    try:
        return encode(images), {}
    except BadImage:
        if not skip_bad:
            raise
    bad = {}
    for i, image in enumerate(images):
        try:
            load_image(image)
        except BadImage as e:
            bad[i] = str(e)
    readable = [im for i, im in enumerate(images) if i not in bad]
    return (encode(readable) if readable else None), bad
