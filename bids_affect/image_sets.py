"""Affective image sets: ratings, categories, streamed batches and low-level covariates.

Users bring their own licensed image sets (IAPS, NAPS and OASIS are not
redistributable). :func:`load_image_set` reads one folder in either layout:

``ratings.tsv`` at the folder's root
    Tab-separated, columns ``file`` (path relative to the folder), ``valence``,
    ``arousal`` and optionally ``category``. Only the files it lists form the
    set; other files in the folder are ignored.
One sub-folder per category (no ``ratings.tsv``)
    The sub-folder's name is the category of every file in it; valence and
    arousal are then unknown (NaN). Files at the top level are ignored.

Categories
    A ``category`` column (or the folder names) is used as given. Without one,
    categories come from valence by seed 002's rule (:func:`valence_categories`):
    thresholds 4.3 and 6.0 with a soft margin of 0.5 on a 1-9 scale. Images
    whose category is ``unknown``, empty or ``n/a`` are dropped (counted in
    :attr:`ImageSet.n_unknown`).

The rule for bad files
    - A ``ratings.tsv`` row naming a file that does not exist is an error
      (:class:`~bids_affect.exceptions.InputMissingError`, exit 66) naming the
      file: the ratings and the folder disagree, so one of them is wrong.
    - Hidden files (a name starting with ``.``: ``.DS_Store``, AppleDouble
      ``._x.jpg``) are never part of a set.
    - A file that Pillow cannot identify as an image (a text file, a corrupt
      header) is refused by default: ``on_unreadable="error"`` raises
      :class:`~bids_affect.exceptions.InputDataError` (exit 65) naming it; with
      ``on_unreadable="skip"`` it is left out with one warning naming every such
      file, and the names are kept in :attr:`ImageSet.skipped`. Refusing is the
      default because a silently smaller set changes the category counts that
      every statistic rests on.
    - Loading reads each file's header only (fast on large sets); a file whose
      header reads but whose pixel data do not decode (a truncated download)
      fails when it is streamed, with an ``InputDataError`` naming it.
    - A category with fewer than ``min_per_category`` images (default 4: the
      50/25/25 split of seed 002's readout needs one of each category in each
      part) is an ``InputDataError`` naming the category and its count.

Images are decoded one at a time with Pillow and handed out in batches of
preprocessed tensors (:class:`ImageStream`), so a set is never all in memory.
:func:`low_level_features` gives the per-image covariates of seed 000's
validation (mean colour or luminance, spatial-frequency energy in radial bands).

Examples
--------
>>> import tempfile
>>> from PIL import Image
>>> root = Path(tempfile.mkdtemp())
>>> rows = []
>>> for i, valence in enumerate([2.0, 5.0, 8.0] * 4):
...     Image.new("RGB", (40, 30), (30 * i, 90, 200)).save(root / f"im{i}.png")
...     rows.append(f"im{i}.png\\t{valence}\\t5.0")
>>> _ = (root / "ratings.tsv").write_text("file\\tvalence\\tarousal\\n" + "\\n".join(rows))
>>> image_set = load_image_set(root, name="demo")
>>> len(image_set), image_set.category_counts()
(12, {'pleasant': 4, 'neutral': 4, 'unpleasant': 4})
>>> from bids_affect.models.image import Preprocessing
>>> tiny = Preprocessing(resize=(32, 32), crop=None, scale=255.0, mean=(0, 0, 0),
...                      std=(1, 1, 1))
>>> stream = ImageStream(image_set, Preprocess(tiny), batch_size=5)
>>> [tuple(batch.shape) for batch in stream.batches()]
[(5, 3, 32, 32), (5, 3, 32, 32), (2, 3, 32, 32)]
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from bids_affect._utils.validation import check_choice, check_int, check_number
from bids_affect.exceptions import InputDataError, InputMissingError, UsageError
from bids_affect.models.image import TORCHVISION_IMAGENET, Preprocessing, preprocess_images

__all__ = [
    "CATEGORIES",
    "RATINGS_FILE",
    "SF_EDGES",
    "VALENCE_MARGIN",
    "VALENCE_THRESHOLDS",
    "ImageSet",
    "ImageSource",
    "ImageStream",
    "Preprocess",
    "TensorImages",
    "as_image_source",
    "check_category_counts",
    "load_image_set",
    "low_level_features",
    "read_image",
    "valence_categories",
]

#: Seed 002's three categories, in the order of its tables.
CATEGORIES = ("pleasant", "neutral", "unpleasant")
#: Valence between unpleasant and neutral, and between neutral and pleasant (1-9 scale).
VALENCE_THRESHOLDS = (4.3, 6.0)
#: Half-width of the band around each threshold where no category is given.
VALENCE_MARGIN = 0.5
#: The ratings file of an image set.
RATINGS_FILE = "ratings.tsv"
#: Edges of the radial spatial-frequency bands of :func:`low_level_features`
#: (cycles per image on a 256 x 256 resampling; 128 is the Nyquist frequency).
SF_EDGES = (1.0, 4.0, 16.0, 64.0, 128.0)

_UNKNOWN = {"", "unknown", "n/a", "nan", "none"}
_SHOWN = 5


# --------------------------------------------------------------------------- categories


def valence_categories(valence: Sequence[float] | np.ndarray, *,
                       thresholds: tuple[float, float] = VALENCE_THRESHOLDS,
                       margin: float = VALENCE_MARGIN) -> np.ndarray:
    """Pleasant, neutral, unpleasant or unknown from valence ratings, as seed 002.

    Seed 002 used soft thresholds of 4.3 +/- 0.5 and 6.0 +/- 0.5 and looked at
    every image near a boundary; images it could not classify confidently
    became "unknown" and were dropped. Without that visual check, the rule
    here leaves every image inside a soft band unknown:

    - ``valence < low - margin``: unpleasant;
    - ``low + margin <= valence <= high - margin``: neutral;
    - ``valence > high + margin``: pleasant;
    - anything else (inside a band, or NaN): unknown.

    ``margin=0`` gives hard thresholds (a rating equal to one is neutral).

    Parameters
    ----------
    valence : array-like of float
        Ratings on the scale the thresholds refer to (1-9 for IAPS and NAPS;
        rescale or change the thresholds for OASIS's 1-7 scale).
    thresholds : (float, float)
        ``(low, high)``, ``low < high``.
    margin : float
        Half-width of the soft band around each threshold, ``>= 0``.

    Returns
    -------
    numpy.ndarray of str
        One category per rating.

    Examples
    --------
    >>> valence_categories([2.0, 4.0, 5.0, 6.2, 7.5, float("nan")]).tolist()
    ['unpleasant', 'unknown', 'neutral', 'unknown', 'pleasant', 'unknown']
    """
    low, high = (check_number(value, "valence_thresholds") for value in thresholds)
    margin = check_number(margin, "valence_margin", minimum=0.0)
    if not low + margin <= high - margin:
        raise UsageError(f"must be increasing with room for the margin {margin}, got "
                         f"{thresholds!r}", path="valence_thresholds")
    values = np.asarray(valence, dtype=float)
    categories = np.full(values.shape, "unknown", dtype=object)
    categories[values < low - margin] = "unpleasant"
    categories[(values >= low + margin) & (values <= high - margin)] = "neutral"
    categories[values > high + margin] = "pleasant"
    return categories.astype(str)


def check_category_counts(categories: Sequence[str] | np.ndarray, minimum: int, *,
                          where: str | os.PathLike = "image set",
                          fix: str | None = None) -> dict[str, int]:
    """Images per category, refusing a category with fewer than ``minimum``.

    Parameters
    ----------
    categories : array-like of str
        One category per image.
    minimum : int
        The fewest images a category may have.
    where : str or path
        The image set, named in the message.
    fix : str, optional
        What to do about it; a default names ``min_per_category``.

    Returns
    -------
    dict
        Category -> count, in order of first appearance.

    Raises
    ------
    InputDataError
        (exit 65) naming the category, its count and the minimum.

    Examples
    --------
    >>> check_category_counts(["a", "b", "a", "b"], 2)
    {'a': 2, 'b': 2}
    >>> check_category_counts(["a", "b", "a"], 2, where="iaps")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: iaps: category 'b' has 1 image, fewer than the 2 ...
    """
    names, first, counts = np.unique(np.asarray(categories, dtype=str), return_index=True,
                                     return_counts=True)
    order = np.argsort(first)
    result = {str(names[i]): int(counts[i]) for i in order}
    for name, count in result.items():
        if count < minimum:
            raise InputDataError(
                f"category {name!r} has {count} image{'s' * (count != 1)}, fewer than the "
                f"{minimum} needed (the 50/25/25 split needs one image of each category in "
                "each part)", path=where,
                fix=fix or "add images to that category, merge it with another, or lower "
                           "min_per_category")
    return result


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class ImageSet:
    """An image set: files, ratings and categories, in a fixed order.

    Attributes
    ----------
    name : str
        The set's name (``IAPS`` in ``--image-set IAPS=/data/iaps``).
    root : pathlib.Path
        Its folder.
    table : pandas.DataFrame
        One row per image, in the set's order: ``file`` (path relative to
        ``root``, POSIX form), ``valence``, ``arousal`` (NaN when unknown) and
        ``category``.
    skipped : tuple of str
        Files left out because Pillow could not read them (``on_unreadable="skip"``).
    n_unknown : int
        Images dropped because their category was unknown.
    """

    name: str
    root: Path
    table: pd.DataFrame
    skipped: tuple[str, ...] = ()
    n_unknown: int = 0

    def __len__(self) -> int:
        return len(self.table)

    @property
    def files(self) -> list[str]:
        """The images' paths relative to :attr:`root`."""
        return self.table["file"].tolist()

    @property
    def paths(self) -> list[Path]:
        """The images' absolute paths."""
        return [self.root / name for name in self.table["file"]]

    @property
    def categories(self) -> np.ndarray:
        """One category per image."""
        return self.table["category"].to_numpy(dtype=str)

    def category_counts(self) -> dict[str, int]:
        """Images per category, in :data:`CATEGORIES` order first, then by name."""
        counts = self.table["category"].value_counts()
        known = [c for c in CATEGORIES if c in counts.index]
        others = sorted(c for c in counts.index if c not in CATEGORIES)
        return {str(c): int(counts[c]) for c in known + others}

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        """The images at ``indices``, in that order."""
        table = self.table.iloc[np.asarray(indices, dtype=int)].reset_index(drop=True)
        return ImageSet(self.name, self.root, table, self.skipped, self.n_unknown)


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def _unreadable_reason(path: Path) -> str | None:
    """Why Pillow cannot identify ``path`` as an image, or None when it can."""
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - reading the header is the check
    except (UnidentifiedImageError, OSError, ValueError) as error:
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    return None


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _read_ratings(root: Path) -> pd.DataFrame:
    path = root / RATINGS_FILE
    try:
        table = pd.read_csv(path, sep="\t", dtype={"file": str, "category": str},
                            keep_default_na=False, na_values=["n/a", "NaN", "nan", ""])
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputDataError(f"cannot be read as a tab-separated table ({error})", path=path,
                             fix="write it as TSV with a header row") from error
    if "file" not in table.columns:
        raise InputDataError(f"has no 'file' column (columns: {', '.join(table.columns)})",
                             path=path, fix="name the column of image paths 'file'")
    if "category" not in table.columns and "valence" not in table.columns:
        raise InputDataError("has neither a 'category' nor a 'valence' column, so images "
                             "cannot be put in categories", path=path,
                             fix="add a 'valence' column (1-9) or a 'category' column")
    if table["file"].isna().any():
        row = int(np.flatnonzero(table["file"].isna())[0]) + 2
        raise InputDataError(f"line {row} has an empty 'file'", path=path,
                             fix="give every row an image path")
    duplicated = table["file"][table["file"].duplicated()].tolist()
    if duplicated:
        raise InputDataError(f"lists {_listing(duplicated)} more than once", path=path,
                             fix="keep one row per image")
    for column in ("valence", "arousal"):
        if column not in table.columns:
            table[column] = np.nan
            continue
        numeric = pd.to_numeric(table[column], errors="coerce")
        bad = table["file"][numeric.isna() & table[column].notna()].tolist()
        if bad:
            raise InputDataError(f"column {column!r} is not a number for {_listing(bad)}",
                                 path=path, fix="use numbers, or n/a for a missing rating")
        table[column] = numeric.astype(float)
    if "category" not in table.columns:
        table["category"] = None
    table["file"] = [Path(name).as_posix() for name in table["file"]]
    missing = [name for name in table["file"] if not (root / name).is_file()]
    if missing:
        raise InputMissingError(f"{RATINGS_FILE} lists {len(missing)} file(s) that do not "
                                f"exist: {_listing(missing)}", path=root / missing[0],
                                fix=f"remove their rows from {path} or add the files")
    return table[["file", "valence", "arousal", "category"]]


def _scan_category_folders(root: Path) -> pd.DataFrame:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))
    if not folders:
        raise InputMissingError(f"has neither a {RATINGS_FILE} nor one sub-folder per "
                                "category", path=root,
                                fix=f"add {RATINGS_FILE} (file, valence, arousal[, category]) "
                                    "or put the images of each category in a folder "
                                    "named after it")
    rows = [(path.relative_to(root).as_posix(), folder.name)
            for folder in folders for path in sorted(folder.iterdir())
            if path.is_file() and not _is_hidden(path)]
    table = pd.DataFrame(rows, columns=["file", "category"])
    table["valence"] = np.nan
    table["arousal"] = np.nan
    return table[["file", "valence", "arousal", "category"]]


def load_image_set(root: str | os.PathLike, name: str | None = None, *,
                   on_unreadable: str = "error", min_per_category: int = 4,
                   valence_thresholds: tuple[float, float] = VALENCE_THRESHOLDS,
                   valence_margin: float = VALENCE_MARGIN,
                   keep_unknown: bool = False) -> ImageSet:
    """Read an image set folder: its files, ratings and categories.

    The layouts and the rule for bad files are in this module's docstring.

    Parameters
    ----------
    root : path
        The image set's folder.
    name : str, optional
        The set's name; default the folder's name.
    on_unreadable : {"error", "skip"}
        What to do with files Pillow cannot identify: refuse the set
        (default) or leave them out with a warning naming them.
    min_per_category : int
        The fewest images a category may keep (default 4).
    valence_thresholds, valence_margin
        Seed 002's rule for images without a category (:func:`valence_categories`).
    keep_unknown : bool
        Keep images of unknown category (as ``"unknown"``) and skip the
        ``min_per_category`` check: for analyses of the ratings themselves
        (seed 000's validation regresses on valence and arousal, so an image
        near a category boundary still counts).

    Returns
    -------
    ImageSet

    Raises
    ------
    InputMissingError
        (exit 66) the folder does not exist, has no ratings and no category
        folders, or ``ratings.tsv`` names a missing file.
    InputDataError
        (exit 65) an unreadable ratings table, an unreadable image (with
        ``on_unreadable="error"``), or a category with too few images.

    Examples
    --------
    >>> import tempfile
    >>> from PIL import Image
    >>> root = Path(tempfile.mkdtemp())
    >>> for category in ("calm", "scary"):
    ...     (root / category).mkdir()
    ...     for i in range(4):
    ...         Image.new("L", (8, 8), 40 * i).save(root / category / f"{i}.png")
    >>> _ = (root / "scary" / "notes.txt").write_text("not an image")
    >>> load_image_set(root, on_unreadable="error")
    Traceback (most recent call last):
    ...
    bids_affect.exceptions.InputDataError: .../scary/notes.txt: is not an image Pillow can read ...
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     image_set = load_image_set(root, on_unreadable="skip")
    >>> image_set.category_counts(), image_set.skipped
    ({'calm': 4, 'scary': 4}, ('scary/notes.txt',))
    """
    check_choice(on_unreadable, "on_unreadable", ("error", "skip"))
    min_per_category = check_int(min_per_category, "min_per_category", minimum=1)
    root = Path(root)
    if not root.is_dir():
        raise InputMissingError("the image set folder does not exist", path=root,
                                fix="give an existing folder as --image-set NAME=DIR")
    name = root.name if name is None else str(name)
    table = (_read_ratings(root) if (root / RATINGS_FILE).is_file()
             else _scan_category_folders(root))
    hidden = [Path(f).name.startswith(".") for f in table["file"]]
    table = table[~np.asarray(hidden, dtype=bool)]
    unreadable = {}
    for file in table["file"]:
        reason = _unreadable_reason(root / file)
        if reason is not None:
            unreadable[file] = reason
    if unreadable:
        names = list(unreadable)
        if on_unreadable == "error":
            raise InputDataError(
                f"is not an image Pillow can read ({unreadable[names[0]]})"
                + (f"; {len(names) - 1} more: {_listing(names[1:])}" if len(names) > 1 else ""),
                path=root / names[0],
                fix="remove or replace the file, or set on_unreadable to 'skip' to leave "
                    "such files out")
        warnings.warn(f"{root}: leaving out {len(names)} file(s) Pillow cannot read: "
                      f"{_listing(names)}", UserWarning, stacklevel=2)
        table = table[~table["file"].isin(names)]
    given = table["category"].astype(object)
    if given.isna().all():
        categories = valence_categories(table["valence"].to_numpy(),
                                        thresholds=valence_thresholds, margin=valence_margin)
    else:
        categories = np.array(["unknown" if pd.isna(c) else str(c).strip() for c in given],
                              dtype=object)
    known = np.array([str(c).lower() not in _UNKNOWN for c in categories], dtype=bool)
    categories = np.where(known, np.asarray(categories, dtype=str), "unknown")
    table = table.assign(category=categories)
    if not keep_unknown:
        table = table[known]
    table = table.reset_index(drop=True)
    if table.empty:
        raise InputDataError("has no image" + ("" if keep_unknown else " with a known category"),
                             path=root, fix="check the ratings' valence scale and the "
                                            "thresholds, or give a 'category' column")
    if not keep_unknown:
        check_category_counts(table["category"], min_per_category, where=root)
    return ImageSet(name, root, table, tuple(unreadable),
                    0 if keep_unknown else int((~known).sum()))


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """PIL image -> a network's input tensor ``(3, height, width)``, float32.

    The resizing, cropping and normalisation are the image network's
    (:class:`bids_affect.models.image.Preprocessing`, applied by
    :func:`~bids_affect.models.image.preprocess_images`), so images of a set
    reach a registry network exactly as the encoding features do. With
    ``grayscale`` the image first becomes luminance (Pillow's ITU-R 601-2
    luma, L = 0.299 R + 0.587 G + 0.114 B) copied into three channels, as
    seed 002 fed grayscale pictures to VGG16 to rule out colour.

    Parameters
    ----------
    preprocessing : Preprocessing
        The network's (``image_network_entry(name).preprocessing``); default
        torchvision's ImageNet transform (224x224 centre crop of a 256 resize).
    grayscale : bool
        Convert to grayscale first.

    Examples
    --------
    >>> from bids_affect.models.image import Preprocessing
    >>> tiny = Preprocessing(resize=(8, 8), crop=None, scale=255.0, mean=(0, 0, 0),
    ...                      std=(1, 1, 1))
    >>> tensor = Preprocess(tiny, grayscale=True)(Image.new("RGB", (16, 12), (255, 0, 0)))
    >>> tuple(tensor.shape), round(float(tensor[2, 0, 0]), 3)
    ((3, 8, 8), 0.298)
    """

    preprocessing: Preprocessing = TORCHVISION_IMAGENET
    grayscale: bool = False

    def __post_init__(self):
        if not isinstance(self.preprocessing, Preprocessing):
            raise UsageError(f"must be a bids_affect.models.image.Preprocessing, got "
                             f"{type(self.preprocessing).__name__}", path="preprocessing")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = image.convert("L").convert("RGB") if self.grayscale else image.convert("RGB")
        return preprocess_images(np.array(image, dtype=np.uint8), self.preprocessing)[0]


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode one image file fully, or raise :class:`InputDataError` naming it.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "x.png"
    >>> Image.new("RGB", (4, 4)).save(path)
    >>> read_image(path).size
    (4, 4)
    """
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise InputDataError(f"cannot be decoded as an image ({error})", path=path,
                             fix="replace the file (it may be truncated) or remove it from "
                                 "the image set") from error


# --------------------------------------------------------------------------- streaming


@runtime_checkable
class ImageSource(Protocol):
    """Anything that hands out image batches: :class:`ImageStream`, :class:`TensorImages`."""

    def __len__(self) -> int: ...

    def batches(self, indices: Sequence[int] | np.ndarray | None = None
                ) -> Iterator[torch.Tensor]: ...


class ImageStream:
    """Batches of preprocessed images of an image set, decoded as they are needed.

    Only one batch of decoded images is in memory at a time.

    Parameters
    ----------
    image_set : ImageSet
        The images.
    preprocess : callable
        PIL image -> float32 tensor ``(3, H, W)``; default :class:`Preprocess`.
    batch_size : int
        Images per batch.
    n_threads : int
        Threads decoding the images of a batch (Pillow releases the GIL while
        decoding); default 1.

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for c in ("a", "b"):
    ...     (root / c).mkdir()
    ...     for i in range(4):
    ...         Image.new("RGB", (9, 9)).save(root / c / f"{i}.png")
    >>> from bids_affect.models.image import Preprocessing
    >>> tiny = Preprocessing((4, 4), None, 255.0, (0, 0, 0), (1, 1, 1))
    >>> stream = ImageStream(load_image_set(root), Preprocess(tiny), batch_size=3)
    >>> [len(b) for b in stream.batches([7, 0, 1, 2])]
    [3, 1]
    """

    def __init__(self, image_set: ImageSet, preprocess=None, batch_size: int = 32,
                 n_threads: int = 1):
        self.image_set = image_set
        self.preprocess = Preprocess() if preprocess is None else preprocess
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.n_threads = check_int(n_threads, "n_threads", minimum=1)

    def __len__(self) -> int:
        return len(self.image_set)

    def _load(self, path: Path) -> torch.Tensor:
        return self.preprocess(read_image(path))

    def batches(self, indices: Sequence[int] | np.ndarray | None = None
                ) -> Iterator[torch.Tensor]:
        """Preprocessed batches ``(b, 3, H, W)`` of the images at ``indices`` (default all)."""
        paths = self.image_set.paths
        order = np.arange(len(paths)) if indices is None else np.asarray(indices, dtype=int)
        executor = ThreadPoolExecutor(self.n_threads) if self.n_threads > 1 else None
        try:
            for start in range(0, len(order), self.batch_size):
                chunk = [paths[i] for i in order[start:start + self.batch_size]]
                tensors = (list(executor.map(self._load, chunk)) if executor
                           else [self._load(path) for path in chunk])
                yield torch.stack(tensors)
        finally:
            if executor is not None:
                executor.shutdown()


@dataclass
class TensorImages:
    """Images already in memory, ``(n, 3, H, W)``, handed out like an :class:`ImageStream`.

    For generated images (synthesis) and tests.

    Examples
    --------
    >>> images = TensorImages(torch.zeros(5, 3, 4, 4), batch_size=2)
    >>> len(images), [len(b) for b in images.batches()]
    (5, [2, 2, 1])
    """

    images: torch.Tensor
    batch_size: int = 32

    def __post_init__(self):
        if not isinstance(self.images, torch.Tensor) or self.images.ndim != 4:
            shape = getattr(self.images, "shape", type(self.images).__name__)
            raise InputDataError(f"an image batch must be a 4-D tensor (n, channels, height, "
                                 f"width), got {shape}", path="images")
        check_int(self.batch_size, "batch_size", minimum=1)

    def __len__(self) -> int:
        return len(self.images)

    def batches(self, indices: Sequence[int] | np.ndarray | None = None
                ) -> Iterator[torch.Tensor]:
        """Batches of the images at ``indices`` (default all), in that order."""
        order = np.arange(len(self.images)) if indices is None else np.asarray(indices, int)
        for start in range(0, len(order), self.batch_size):
            yield self.images[torch.as_tensor(order[start:start + self.batch_size])]


def as_image_source(images, batch_size: int = 32) -> ImageSource:
    """An :class:`ImageSource` from a source or a 4-D tensor of images.

    Examples
    --------
    >>> len(as_image_source(torch.zeros(3, 3, 2, 2)))
    3
    """
    if isinstance(images, torch.Tensor):
        return TensorImages(images, batch_size)
    if isinstance(images, ImageSource):
        return images
    raise UsageError(f"must be an ImageStream, TensorImages or a 4-D tensor, got "
                     f"{type(images).__name__}", path="images")


# --------------------------------------------------------------------------- covariates


def _radial_frequency(size: int) -> np.ndarray:
    frequencies = np.fft.fftfreq(size) * size  # cycles per image
    return np.hypot(*np.meshgrid(frequencies, frequencies, indexing="ij"))


@dataclass(frozen=True)
class _CovariateKernel:
    colour: str
    size: int
    edges: tuple[float, ...]
    window: np.ndarray = field(repr=False)
    bands: tuple[np.ndarray, ...] = field(repr=False)

    @classmethod
    def build(cls, colour: str, size: int, edges: tuple[float, ...]) -> _CovariateKernel:
        hann = np.hanning(size).astype(np.float32)
        radius = _radial_frequency(size)
        bands = tuple((radius >= lo) & (radius < hi) for lo, hi in zip(edges[:-1], edges[1:]))
        return cls(colour, size, edges, np.outer(hann, hann), bands)

    def __call__(self, image: Image.Image) -> list[float]:
        rgb = np.asarray(image.convert("RGB").resize((self.size, self.size),
                                                     Image.Resampling.BILINEAR),
                         dtype=np.float32) / np.float32(255.0)
        luminance = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        colour = (rgb.mean(axis=(0, 1)).tolist() if self.colour == "rgb"
                  else [float(luminance.mean())])
        # Windowed, mean-free luminance: the window keeps the image border from
        # adding a cross of spurious energy at every frequency.
        centred = (luminance - luminance.mean()) * self.window
        power = np.abs(np.fft.fft2(centred)) ** 2
        energy = [float(np.log10(power[band].mean() + 1e-12)) for band in self.bands]
        return colour + energy


def low_level_features(image_set: ImageSet, *, colour: str = "rgb",
                       sf_edges: Sequence[float] = SF_EDGES, size: int = 256,
                       n_threads: int = 1) -> pd.DataFrame:
    """Low-level covariates of every image: mean colour and spatial-frequency energy.

    Seed 000 controlled its valence and arousal effects for colour and
    spatial frequency. Per image:

    - ``red``, ``green``, ``blue``: mean of each channel in [0, 1]
      (``colour="rgb"``), or ``luminance`` (Rec. 601 luma) alone;
    - ``sf_LO_HI``: log10 of the mean power of the luminance's 2-D Fourier
      transform with radial frequency in ``[LO, HI)`` cycles per image. The
      image is first resampled to ``size x size`` (so a band means the same
      on every image), its mean removed and a Hann window applied.
      Log power, not the fraction of power per band: fractions sum to one and
      would be collinear with an intercept.

    Parameters
    ----------
    image_set : ImageSet
    colour : {"rgb", "luminance"}
    sf_edges : sequence of float
        Increasing band edges in cycles per image, at most ``size / 2``.
    size : int
        Side of the resampling.
    n_threads : int
        Threads decoding the images.

    Returns
    -------
    pandas.DataFrame
        One row per image (index: ``file``).

    Examples
    --------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "x").mkdir()
    >>> Image.new("RGB", (20, 20), (255, 0, 0)).save(root / "x" / "red.png")
    >>> table = low_level_features(load_image_set(root, min_per_category=1), size=32,
    ...                            sf_edges=(1, 4, 16))
    >>> table.columns.tolist(), float(table.loc["x/red.png", "red"])
    (['red', 'green', 'blue', 'sf_1_4', 'sf_4_16'], 1.0)
    """
    check_choice(colour, "colour", ("rgb", "luminance"))
    size = check_int(size, "size", minimum=8)
    edges = tuple(float(e) for e in sf_edges)
    if (len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:]))
            or edges[0] < 0 or edges[-1] > size / 2):
        raise UsageError(f"must be at least two increasing edges within [0, {size / 2:g}] "
                         f"cycles per image, got {tuple(sf_edges)!r}", path="sf_edges")
    kernel = _CovariateKernel.build(colour, size, edges)
    names = ["red", "green", "blue"] if colour == "rgb" else ["luminance"]
    names += [f"sf_{lo:g}_{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])]

    def one(path: Path) -> list[float]:
        return kernel(read_image(path))

    with ThreadPoolExecutor(check_int(n_threads, "n_threads", minimum=1)) as executor:
        rows = list(executor.map(one, image_set.paths))
    table = pd.DataFrame(rows, columns=names, index=pd.Index(image_set.files, name="file"))
    return table.astype(np.float64)
