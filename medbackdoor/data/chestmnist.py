"""``chestmnist``: ChestMNIST from MedMNIST v2/MedMNIST+, i.e. NIH ChestX-ray14 downsized to 28, 64, 128 or 224 px.

ChestMNIST (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data 10, 41, 2023; MedMNIST+ adds the 64/128/224 px files) repackages the 112,120
frontal radiographs of NIH ChestX-ray14 (Wang et al., "ChestX-ray8: Hospital-scale chest X-ray database and
benchmarks on weakly-supervised classification and localization of common thorax diseases", CVPR 2017) as gray
uint8 arrays with the 14 NLP-mined findings. Data licence: CC BY 4.0 (MedMNIST); cite both papers.

Layout under ``root`` (default ``~/.medmnist``, the folder the ``medmnist`` package uses), one file per size::

    chestmnist.npz        28 px   (MedMNIST v2)
    chestmnist_64.npz     64 px   (MedMNIST+)
    chestmnist_128.npz   128 px
    chestmnist_224.npz   224 px   (about 3.9 GB compressed, 5.6 GB of pixels)

Each file is a NumPy ``.npz`` with ``train_images``, ``val_images``, ``test_images`` (N×S×S uint8; an extra
trailing channel of 1 is accepted) and ``train_labels``, ``val_labels``, ``test_labels`` (N×14 in {0, 1}). The
splits are kept as given: 78,468 train / 11,219 val / 22,433 test. Images are named ``<split>_<row>``
(``train_000123`` is row 123 of ``train_images``). The label columns are matched to
:data:`medbackdoor.labels.LABELS` by name (MedMNIST's ``pleural`` is ``Pleural_Thickening``), with the names taken
from ``medmnist.INFO`` when the package is installed, else from a copy of them (:data:`MEDMNIST_LABELS`).

When the file is missing and ``download`` is true, it is fetched from the URL in ``medmnist.INFO`` and checked
against the MD5 there, with the helper ``medmnist`` itself uses (torchvision's ``download_url``); the file
appears under ``root`` only once complete and verified. Files are read with ``allow_pickle=False``. Members
stored uncompressed are memory-mapped in place. Compressed members (as in the Zenodo files: ``chestmnist_224.npz``
is 3.9 GB for 5.6 GB of pixels) are unpacked once into ``unpack_dir`` (default ``<medbackdoor cache>/chestmnist``)
and memory-mapped from there, so every process reads the same pages and pickling the dataset (worker processes)
copies no pixels.

Caveats, none of which the toolkit can check:

* There are no patient ids in ChestMNIST. Each image is its own pseudo-patient (its name), so ``patients`` in
  :meth:`summary` counts images and ``patient_overlap`` (0 by construction) is reported as None: not checked.
  MedMNIST says it uses "the official data split"; its counts are those of the CheXNet reimplementation's lists
  (github.com/arnoweng/CheXNet ``train_list.txt``/``val_list.txt``/``test_list.txt``, 70/10/20), not NIH's own
  ``train_val_list.txt``/``test_list.txt`` (86,524/25,596). Whether any patient spans two splits cannot be
  checked here; with the full NIH release, ``nih`` with ``split: chexnet`` reads those lists with patient ids.
* Labels are NIH's text-mined labels (estimated >90% accurate), with the same noise; "No Finding" is the all-zero
  row. Images were downsized by MedMNIST from the 1024 px originals; no crop or view metadata is kept.

The file machinery here (file names, checking an ``.npz`` without unpickling, memory-mapping or unpacking its image
arrays, the download with MedMNIST's URL and MD5) is generic over MedMNIST's flags: :mod:`medbackdoor.data.medmnist2d`
reads the other 2D flags with it (``flag=`` and ``channels=`` arguments; the defaults are ChestMNIST's).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medbackdoor.data.base import SPLITS, ChestXrayDataset
from medbackdoor.errors import UserError
from medbackdoor.labels import LABELS, NUM_CLASSES, label_index

FLAG = "chestmnist"
SIZES = (28, 64, 128, 224)
DEFAULT_SIZE = 64
N_SAMPLES = {"train": 78468, "val": 11219, "test": 22433}
HOMEPAGE = "https://zenodo.org/records/10519652"


def install_hint(flag: str = FLAG) -> str:
    """The one line that says how to get ``medmnist`` (which holds the download URLs and MD5s)."""
    return f"{flag} needs the medmnist package: pip install 'medbackdoor[medmnist]'"


INSTALL_HINT = install_hint(FLAG)
# ``medmnist.INFO["chestmnist"]["label"]`` in column order, as of medmnist 3.0.2 (used when medmnist is absent;
# tests/test_chestmnist.py checks it against the installed package).
MEDMNIST_LABELS = ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
                   "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia")
# MedMNIST names that are not one of ours up to case, spaces and underscores.
NAME_ALIASES = {"pleural": "Pleural_Thickening"}
COPY_CHUNK = 1 << 22


def default_root() -> Path:
    """``~/.medmnist``, the default folder of the ``medmnist`` package (computed without importing it)."""
    return Path.home() / ".medmnist"


def file_name(size: int, flag: str = FLAG) -> str:
    """MedMNIST's file name for ``size``: ``{flag}.npz`` at 28 px, else ``{flag}_{size}.npz``."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def medmnist_info(flag: str = FLAG) -> dict | None:
    """``medmnist.INFO[flag]`` if the package is importable (and knows ``flag``), else None."""
    try:
        from medmnist.info import INFO
    except ImportError:
        return None
    return INFO.get(flag)


def medmnist_label_names(info: dict | None = None) -> tuple[str, ...]:
    """MedMNIST's label names in its column order: from ``info`` (``INFO["chestmnist"]``), else the copy."""
    if info is None or "label" not in info:
        return MEDMNIST_LABELS
    labels = info["label"]
    return tuple(labels[str(i)] for i in range(len(labels)))


def our_label(name: str) -> str:
    """The :data:`LABELS` entry that MedMNIST's label ``name`` stands for (matched by name, never by position).

    Case, spaces and underscores are ignored (``pleural_thickening`` is ``Pleural_Thickening``); MedMNIST's
    ``pleural`` is ``Pleural_Thickening``.

    Raises:
        UserError: ``name`` is none of the 14 findings.
    """
    key = _normal(name)
    if key in NAME_ALIASES:
        return NAME_ALIASES[key]
    ours = {_normal(label): label for label in LABELS}
    return ours[key] if key in ours else LABELS[label_index(key)]


def _normal(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").split())


def label_columns(names: tuple[str, ...] | list[str]) -> np.ndarray:
    """For each of our :data:`LABELS`, the MedMNIST column holding it: ``ours = theirs[:, label_columns(...)]``.

    Raises:
        UserError: the names are not the 14 findings, each once.
    """
    if len(names) != NUM_CLASSES:
        raise UserError(f"chestmnist: medmnist lists {len(names)} labels, expected {NUM_CLASSES}")
    try:
        ours = [our_label(n) for n in names]
    except UserError as exc:
        raise UserError(f"chestmnist: cannot match medmnist label names {list(names)} to ours: {exc}") from None
    if sorted(ours) != sorted(LABELS):
        raise UserError(f"chestmnist: medmnist labels {list(names)} do not map one-to-one onto {list(LABELS)}")
    return np.array([ours.index(label) for label in LABELS])


class MappedSplits:
    """A mixin for a MedMNIST file dataset (a :class:`ChestXrayDataset`): finding or fetching the file, the table
    of ``{split}_{row:06d}`` names, and pixels that are one memory-mapped array per split (``self._sources``, from
    :func:`open_npz`), opened on first use in each process and never pickled (worker processes reopen the maps;
    pickling them would copy every pixel into each task)."""

    _sources: dict
    _arrays: dict

    @classmethod
    def present(cls, root=None, size: int = DEFAULT_SIZE, **options) -> bool:
        """Whether ``root/{flag}[_size].npz`` is a file (nothing is downloaded or read)."""
        folder = Path(root).expanduser() if root is not None else default_root()
        return size in SIZES and (folder / file_name(int(size), getattr(cls, "flag", "") or cls.name)).is_file()

    def _find_file(self, flag: str, root, size, download: bool) -> None:
        """Set ``size``, ``root`` and ``path`` (``root/{flag}[_size].npz``), downloading the file if it is missing
        and ``download`` is true."""
        if isinstance(size, bool) or size not in SIZES:
            raise UserError(f"{flag} size must be one of {', '.join(map(str, SIZES))} (pixels), got {size!r}")
        self.size = int(size)
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.path = self.root / file_name(self.size, flag)
        if not self.path.is_file():
            if not download:
                raise UserError(f"{flag}: {self.path} not found and download is off; put {self.path.name} "
                                f"there (from {HOMEPAGE}) or set dataset.options.download=true")
            download_file(self.root, self.size, flag)
        stat = self.path.stat()
        self._file_id = [self.path.name, stat.st_size, stat.st_mtime_ns]

    def _set_split_table(self, labels: dict[str, np.ndarray], limit: int | None, seed: int) -> None:
        """The table from the per-split label rows (names ``{split}_{row:06d}``, each its own pseudo-patient)."""
        names, table, splits = [], [], []
        for split in SPLITS:
            n = len(labels[split])
            names += [f"{split}_{i:06d}" for i in range(n)]
            table.append(labels[split])
            splits += [split] * n
        names = np.array(names)
        self._set_table(names, np.concatenate(table), names, np.array(splits), limit, seed)
        self._rows = np.array([int(n.rsplit("_", 1)[1]) for n in self.names], dtype=np.int64)
        self._arrays = {}

    def _split_array(self, split: str) -> np.ndarray:
        if split not in self._arrays:
            self._arrays[split] = self._sources[split].open()
        return self._arrays[split]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = {}
        return state


class ChestMNIST(MappedSplits, ChestXrayDataset):
    """ChestMNIST at one size, from ``root`` (see the module docstring for the layout, splits and caveats).

    It has no patient ids, so :meth:`summary` reports ``patient_overlap`` as None (unknown), not 0.

    Args:
        root: folder holding ``chestmnist.npz`` / ``chestmnist_{size}.npz`` (default ``~/.medmnist``).
        size: 28, 64, 128 or 224 (pixels); picks the file.
        download: fetch the file with medmnist's URL and MD5 when it is not under ``root``.
        seed: seeds ``limit``.
        limit: keep at most this many images per split (a seeded subset), for quick runs.
        unpack_dir: where compressed image arrays are unpacked once for memory-mapping (default
            ``<medbackdoor cache>/chestmnist``, i.e. ``$MEDBACKDOOR_CACHE`` or ``~/.cache/medbackdoor``).
    """

    name = "chestmnist"
    label_names = LABELS
    has_patient_ids = False

    @classmethod
    def example(cls, root) -> dict:
        """A miniature ``chestmnist.npz`` (MedMNIST's keys: ``{split}_images`` N×28×28 uint8, ``{split}_labels``
        N×14 in MedMNIST's column order)."""
        rng = np.random.default_rng(0)
        arrays = {}
        for split, n in (("train", 24), ("val", 8), ("test", 8)):
            arrays[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
            arrays[f"{split}_labels"] = (rng.random((n, NUM_CLASSES)) < 0.2).astype(np.uint8)
        folder = Path(root)
        folder.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(folder / file_name(28), **arrays)
        return {"root": str(folder), "size": 28, "download": False, "unpack_dir": str(folder / "unpacked")}

    def __init__(self, root: str | os.PathLike | None = None, size: int = DEFAULT_SIZE, download: bool = True,
                 seed: int = 0, limit: int | None = None, unpack_dir: str | os.PathLike | None = None) -> None:
        self._find_file(FLAG, root, size, download)
        info = medmnist_info()
        self.medmnist_names = medmnist_label_names(info)
        columns = label_columns(self.medmnist_names)
        self._unpack_dir = Path(unpack_dir).expanduser() if unpack_dir is not None else None
        self._sources, labels = open_npz(self.path, self.size, self._unpack_dir)
        self._set_split_table({split: rows[:, columns] for split, rows in labels.items()}, limit, seed)

    def read_source(self, index: int) -> np.ndarray:
        image = self._split_array(self.splits[index])[self._rows[index]]
        return np.array(image.reshape(self.size, self.size), dtype=np.uint8, order="C")

    def source_fingerprint(self) -> dict:
        return {"dataset": self.name, "file": self._file_id, "size": self.size,
                "medmnist_names": list(self.medmnist_names)}


class _ImageSource:
    """Where one image array lies in a file (offset, shape, order): memory-mapped on :meth:`open`."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], fortran: bool) -> None:
        self.path, self.offset, self.shape, self.fortran = str(path), int(offset), tuple(shape), bool(fortran)

    def open(self) -> np.ndarray:
        return np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=self.shape,
                         order="F" if self.fortran else "C")


def open_npz(path: Path, size: int, unpack_dir: Path | None = None, *, flag: str = FLAG, channels: int = 1,
             read_labels: Callable | None = None) -> tuple[dict[str, _ImageSource], dict[str, np.ndarray]]:
    """Check a MedMNIST ``.npz`` (keys, dtypes, shapes, label values) and locate its image arrays, never unpickling.

    Args:
        path: the file (``{flag}[_{size}].npz``).
        size: the side in pixels every image must have.
        unpack_dir: where compressed image members are unpacked (default ``<medbackdoor cache>/{flag}``).
        flag: the MedMNIST flag, which starts every message and names the default unpack folder.
        channels: 1 (``N×S×S`` uint8, or ``N×S×S×1``) or 3 (``N×S×S×3`` uint8, channel last, as MedMNIST stores
            colour).
        read_labels: ``read_labels(npz, path, key)``, which checks one ``{split}_labels`` member and returns its
            rows as float32 (or raises :class:`UserError`); default ChestMNIST's N×14 in {0, 1}.

    Returns:
        per split, the image array's :class:`_ImageSource` and the labels ``read_labels`` returned.

    Raises:
        UserError: the file is not a readable ``.npz`` without pickles, or its content is not the flag's.
    """
    read_labels = read_labels or _read_labels
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{flag}: {path} is not a readable .npz (a partial download?): {_reason(exc)}") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise UserError(f"{flag}: {path} is a single .npy array, not an .npz with train/val/test arrays")
    with npz:
        wanted = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
        lacking = [k for k in wanted if k not in npz.files]
        if lacking:
            raise UserError(f"{flag}: {path} lacks {', '.join(lacking)} (has {', '.join(npz.files) or 'nothing'})")
        sources, labels = {}, {}
        try:
            for split in SPLITS:
                labels[split] = read_labels(npz, path, f"{split}_labels")
                sources[split] = _locate_images(npz, path, f"{split}_images", size, len(labels[split]), unpack_dir,
                                                channels=channels, flag=flag)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"{flag}: {path} is damaged (a partial download?): {_reason(exc)}") from None
    return sources, labels


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _member(npz, key: str) -> zipfile.ZipInfo:
    return npz.zip.getinfo(key + ".npy")


def member_header(npz, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the member ``key`` of an open ``.npz``, read from its ``.npy`` header
    alone (an object array is reported, never unpickled)."""
    with npz.zip.open(_member(npz, key)) as f:
        return _read_header(f)


def _read_header(stream) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(stream)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(stream)
    return np.lib.format._read_array_header(stream, version)  # (3, 0): no public reader


def _read_labels(npz, path: Path, key: str) -> np.ndarray:
    shape, _, dtype = member_header(npz, key)
    if dtype.hasobject or dtype.kind not in "biuf" or len(shape) != 2 or shape[1] != NUM_CLASSES:
        raise UserError(f"chestmnist: {path}: {key} is {dtype} {shape}, expected N×{NUM_CLASSES} integers")
    values = npz[key]
    if not np.isin(values, (0, 1)).all():
        raise UserError(f"chestmnist: {path}: {key} has values other than 0 and 1")
    return values.astype(np.float32)


def _locate_images(npz, path: Path, key: str, size: int, n: int, unpack_dir: Path | None, channels: int = 1,
                   flag: str = FLAG) -> _ImageSource:
    """Check the image member ``key`` (uint8, ``n`` images of ``size``² pixels, ``channels`` trailing: gray may
    carry a trailing channel of 1) and locate it: mapped in place when stored, else unpacked once."""
    info = _member(npz, key)
    with npz.zip.open(info) as f:
        shape, fortran, dtype = _read_header(f)
        header_len = f.tell()
    if channels == 1:
        ok_shape = len(shape) in (3, 4) and (len(shape) == 3 or shape[3] == 1)
        expected, kind = f"({n}, {size}, {size})", "gray"
    else:
        ok_shape = len(shape) == 4 and shape[3] == channels
        expected, kind = f"({n}, {size}, {size}, {channels})", "RGB, channel last"
    if dtype != np.uint8 or not ok_shape or tuple(shape[1:3]) != (size, size) or shape[0] != n:
        raise UserError(f"{flag}: {path}: {key} is {dtype} {shape}, expected uint8 {expected} "
                        f"({kind}, {n} images like {key.replace('images', 'labels')})")
    if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
        return _ImageSource(path, _data_offset(path, info) + header_len, shape, fortran)
    return _unpack(npz, path, info, shape, fortran, unpack_dir, flag)


def _data_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored (uncompressed) member's data in the zip file: after its local header."""
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _unpack(npz, path: Path, info: zipfile.ZipInfo, shape, fortran: bool, unpack_dir: Path | None,
            flag: str = FLAG) -> _ImageSource:
    """Decompress one member into ``unpack_dir`` once (atomically, under a lock) and return it as a source."""
    from medbackdoor.data.cache import default_cache_dir, lock_for

    stat = path.stat()
    ident = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{info.CRC}".encode()).hexdigest()
    folder = (unpack_dir if unpack_dir is not None else default_cache_dir() / flag) / f"{path.stem}-{ident[:12]}"
    target = folder / info.filename
    nbytes = int(np.prod(shape))
    try:
        with lock_for(target):
            if not _complete(target, shape, fortran):
                _unpack_member(npz, info, target, shape, fortran, f"unpacking {path.name}:{info.filename}")
    except OSError as exc:  # the unpack folder: not writable, no space
        raise UserError(f"{flag}: cannot unpack {path.name} into {folder} ({_reason(exc)}); it needs "
                        f"{nbytes / 2**30:.2f} GiB there, or set dataset.options.unpack_dir") from None
    array = np.load(target, mmap_mode="r")
    offset = array.offset
    del array
    return _ImageSource(target, offset, shape, fortran)


def _unpack_member(npz, info: zipfile.ZipInfo, target: Path, shape, fortran: bool, desc: str) -> None:
    """Stream one ``.npy`` member into ``target`` chunk by chunk (memory stays flat), atomically."""
    from tqdm.auto import tqdm

    from medbackdoor._io import atomic_path

    nbytes = int(np.prod(shape))
    with atomic_path(target, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape, fortran_order=fortran)
        offset = out.offset
        del out
        with npz.zip.open(info) as src, open(tmp, "r+b") as dst, tqdm(
                total=nbytes, unit="B", unit_scale=True, desc=desc, disable=None, leave=False) as bar:
            _read_header(src)
            dst.seek(offset)
            copied = 0
            while chunk := src.read(COPY_CHUNK):
                dst.write(chunk)
                copied += len(chunk)
                bar.update(len(chunk))
        if copied != nbytes:
            raise EOFError(f"{info.filename} holds {copied} bytes of pixels, expected {nbytes}")


def _complete(target: Path, shape, fortran: bool) -> bool:
    if not target.is_file():
        return False
    try:
        array = np.load(target, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    ok = array.shape == tuple(shape) and array.dtype == np.uint8 and bool(array.flags.f_contiguous) == fortran
    del array
    return ok


def download_file(root: Path, size: int, flag: str = FLAG) -> Path:
    """Fetch ``{flag}[_size].npz`` into ``root`` with medmnist's URL and MD5 (what ``medmnist`` does itself).

    The file is downloaded under a temporary name and renamed into place only after the MD5 matches, so a failed
    or interrupted download leaves nothing that looks like the dataset.

    Raises:
        UserError: medmnist is not installed, or the download fails (offline, wrong MD5, no space).
    """
    name = file_name(size, flag)
    info = medmnist_info(flag)
    if info is None:
        try:
            import medmnist  # noqa: F401
        except ImportError:
            raise UserError(f"{install_hint(flag)} (to download {name} into {root}; or place the file there "
                            f"yourself, from {HOMEPAGE})") from None
        raise UserError(f"{flag}: the installed medmnist does not know {flag}; place {name} in {root} yourself, "
                        f"from {HOMEPAGE}")
    suffix = "" if size == 28 else f"_{size}"
    url, md5 = info.get(f"url{suffix}"), info.get(f"MD5{suffix}")
    if not url:
        raise UserError(f"{flag}: the installed medmnist has no {size} px download; place {name} in {root} "
                        f"yourself, from {HOMEPAGE}")
    from torchvision.datasets.utils import download_url

    target = root / name
    staging = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        # A fresh folder, not a pre-created file: download_url skips a download when the file exists and no MD5
        # is given.
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".download", dir=root))
        download_url(url, str(staging), filename=name, md5=md5)
        os.replace(staging / name, target)
    except Exception as exc:  # network, HTTP, MD5 mismatch (RuntimeError), disk: all reported the same way
        raise UserError(f"{flag}: could not download {url} into {root} ({_reason(exc)}); download it yourself "
                        f"and place it at {target} (MD5 {md5}), or check the network") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return target
