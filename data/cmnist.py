"""ColoredMNIST (IRM paper construction) from MNIST-family IDX files: MNIST or Fashion-MNIST.

Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte`` (``.gz`` or not; ``train-images.idx3-ubyte`` spellings accepted), in
torchvision's layout (``<root>/MNIST/raw/``, ``<root>/FashionMNIST/raw/``) or flat in ``<root>``.

Construction (Arjovsky et al., 2019), driven by ``--data_seed``:

1. Splits: the IDX training file is permuted; 1/6 of it (10,000 of MNIST's 60,000) is ``val``,
   the rest ``train``. ``test`` is the t10k file. Train and val samples alternate between the two
   training environments (env 0 and 1, half each); test samples are env 2.
2. Label ``y = 1`` for class < 5 (digits 0-4; T-shirt, trouser, pullover, dress, coat), then
   flipped with probability ``--label_noise`` (default 0.25) in every split.
3. Colour ``a`` agrees with the (noisy) label with probability ``r`` in env 0, ``r - 0.1`` in
   env 1 and ``1 - r`` in test, where ``r = --spurious_ratio`` (default 0.9, the paper's colour
   flips of 0.1, 0.2 and 0.9); probabilities are clipped to [0, 1]. The grey image (scaled to
   [0, 1]) goes into channel ``a`` of a 2-channel image.
4. ``--downsample`` keeps every second pixel (28x28 -> 14x14), as the paper does.
"""
from __future__ import annotations

import gzip
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.base import TensorSpuriousDataset
from data.config import DataConfig
from data.images import require_root
from utils.errors import UserError
from utils.options import option

DEFAULT_SPURIOUS_RATIO = 0.9
ENV_GAP = 0.1
DEFAULT_LABEL_NOISE = 0.25
VAL_FRACTION = 1 / 6
TEST_ENV = 2
SOURCES = {"mnist": "MNIST", "fashion": "FashionMNIST"}
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
UNSIGNED_BYTE = 0x08


@dataclass(frozen=True)
class CmnistConfig:
    """cmnist's own flags (``DataConfig.own``)."""

    mnist_source: str = option("mnist", "cmnist: which IDX files to colour (MNIST or Fashion-MNIST)",
                               choices=sorted(SOURCES))
    download: bool = option(False, "cmnist: fetch the IDX files into --train_root_dir through torchvision (needs the "
                                   "network)", action="store_true")
    downsample: bool = option(False, "cmnist: 14x14 images (every second pixel)", action="store_true")


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (gzipped or not) as a numpy array of its declared shape."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file {path} ({exc}); replace it with an intact copy") from exc
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != UNSIGNED_BYTE:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic number); replace it with an intact copy")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", data[4:header]) if len(data) >= header else ()
    if len(shape) != ndim or len(data) != header + math.prod(shape):
        raise UserError(f"{path} is truncated or corrupt: its size does not match its header; replace it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def find_idx(root: Path, source: str, stem: str, flag: str = "--train_root_dir") -> Path:
    """``stem`` (with '-' or '.' before ``idx``, gzipped or not) in torchvision's layout or flat; ``flag``
    names the option that gave ``root`` in the error."""
    folders = [root / SOURCES[source] / "raw", root]
    names = [stem, stem.replace("-idx", ".idx")]
    for folder in folders:
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    raise UserError(
        f"{stem}[.gz] not found in {folders[0]} or {folders[1]}; point {flag} at the folder holding "
        f"the {source} IDX files (or its parent in torchvision's layout)"
        + (", or add --download" if flag == "--train_root_dir" else "")
    )


def load_idx_pair(root: Path, source: str, part: str, flag: str = "--train_root_dir") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and class labels (N,) of the ``train`` or ``test`` IDX files."""
    image_path, label_path = (find_idx(root, source, stem, flag) for stem in IDX_FILES[part])
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise UserError(f"{image_path} / {label_path}: expected (N, H, W) images and (N,) labels, "
                        f"got shapes {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise UserError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise UserError(f"{label_path} holds label {labels.max()}; MNIST-family labels are 0..9")
    return images, labels


def download(root: Path, source: str) -> None:
    """Let torchvision fetch the four IDX files into ``root/<MNIST|FashionMNIST>/raw/``."""
    import torchvision

    dataset_class = torchvision.datasets.MNIST if source == "mnist" else torchvision.datasets.FashionMNIST
    try:
        dataset_class(str(root), train=True, download=True)
    except (RuntimeError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"--download could not fetch {source} into {root} ({first_line}); you seem to be offline: copy the IDX "
            f"files into {root / SOURCES[source] / 'raw'} and drop --download"
        ) from exc


def agreement_rates(spurious_ratio: float) -> np.ndarray:
    """P(colour agrees with label) indexed by environment id: env 0, env 1, test (``TEST_ENV``)."""
    return np.clip([spurious_ratio, spurious_ratio - ENV_GAP, 1.0 - spurious_ratio], 0.0, 1.0)


def colourise(images: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """The IRM paper's colouring: each grey image (N, H, W) goes into channel ``colour[i]`` of 2."""
    out = torch.zeros(len(images), 2, *images.shape[1:], dtype=images.dtype)
    out[torch.arange(len(images)), colour] = images
    return out


def colour_split(images: np.ndarray, classes: np.ndarray, env: np.ndarray, agreement: np.ndarray,
                 label_noise: float, downsample: bool, rng: np.random.Generator,
                 split: str) -> TensorSpuriousDataset:
    """One split: noisy binary labels, colour by per-sample agreement probability, 2-channel images."""
    y = (classes < 5).astype(np.int64)
    y = np.where(rng.random(len(y)) < label_noise, 1 - y, y)
    a = np.where(rng.random(len(y)) < agreement, y, 1 - y)
    grey = torch.tensor(images[:, ::2, ::2] if downsample else images, dtype=torch.float32).div_(255.0)
    y_t, a_t = torch.from_numpy(y), torch.from_numpy(a)
    return TensorSpuriousDataset(colourise(grey, a_t), y_t, a_t, n_classes=2, n_attrs=2, split=split,
                                 env=torch.from_numpy(env))


def make_colored_mnist(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                       spurious_ratio: float = DEFAULT_SPURIOUS_RATIO, label_noise: float = DEFAULT_LABEL_NOISE,
                       data_seed: int = 0, downsample: bool = False) -> dict[str, TensorSpuriousDataset]:
    """The three splits (see the module docstring) from (images, classes) of the IDX train and test files."""
    rates = agreement_rates(spurious_ratio)
    rng = np.random.default_rng(data_seed)
    order = rng.permutation(len(train[1]))
    n_val = round(len(order) * VAL_FRACTION)
    splits = {}
    for split, idx in (("val", order[:n_val]), ("train", order[n_val:])):
        env = np.arange(len(idx)) % 2
        splits[split] = colour_split(train[0][idx], train[1][idx], env, rates[env], label_noise, downsample,
                                     rng, split)
    test_env = np.full(len(test[1]), TEST_ENV)
    splits["test"] = colour_split(test[0], test[1], test_env, rates[test_env], label_noise, downsample, rng, "test")
    return {name: splits[name] for name in ("train", "val", "test")}


def build(data: DataConfig) -> dict[str, TensorSpuriousDataset]:
    own: CmnistConfig = data.own
    if own.download and data.train_root_dir is not None:
        download(Path(data.train_root_dir).expanduser(), own.mnist_source)
    root = require_root(data, "cmnist", f"the {own.mnist_source} IDX files")
    ratio = DEFAULT_SPURIOUS_RATIO if data.spurious_ratio is None else data.spurious_ratio
    noise = DEFAULT_LABEL_NOISE if data.label_noise is None else data.label_noise
    return make_colored_mnist(load_idx_pair(root, own.mnist_source, "train"),
                              load_idx_pair(root, own.mnist_source, "test"),
                              ratio, noise, data.data_seed, own.downsample)
