"""A synthetic photo data set in the Waterbirds layout, for timing the photo data path.

    python3 benchmarks/photo_folder.py OUT [--n 12000] [--side 320] [--seed 0]

Writes ``OUT/metadata.csv`` (``img_id,img_filename,y,split,place,place_filename``) and ``--n``
JPEG images of ``--side`` x ``--side`` pixels in species folders. The images are smooth colour
gradients with a few soft blobs and a little grain, so they compress and decode like photos
(tens of kB each), not like noise. Splits 2/3 train, 1/6 val, 1/6 test; in train the place
agrees with the label for 95% of the images, elsewhere half of the time.
"""
from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image


def photo(rng: np.random.Generator, side: int) -> np.ndarray:
    """One (side, side, 3) uint8 image: a two-colour gradient, three blobs, some grain."""
    ramp = np.linspace(0.0, 1.0, side, dtype=np.float32)
    angle = rng.uniform(0, np.pi)
    t = np.clip(np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None], 0, 1)[..., None]
    low, high = rng.uniform(0, 255, (2, 1, 1, 3)).astype(np.float32)
    image = low + (high - low) * t
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    for _ in range(3):
        cy, cx, radius = rng.uniform(0, side, 2).tolist() + [rng.uniform(side / 10, side / 4)]
        weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))[..., None]
        image = image * (1 - weight) + rng.uniform(0, 255, 3).astype(np.float32) * weight
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_photo_folder(root: Path, n: int, side: int = 320, seed: int = 0, threads: int | None = None) -> Path:
    """Write the folder (see the module docstring); return ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    split = np.repeat([0, 1, 2], [n - 2 * (n // 6), n // 6, n // 6])
    y = rng.integers(0, 2, n)
    agree = np.where(split == 0, rng.random(n) < 0.95, rng.random(n) < 0.5)
    place = np.where(agree, y, 1 - y)
    names = [f"{1 + int(label):03d}.Species_{int(label)}/photo_{i:06d}.jpg" for i, label in enumerate(y)]
    for folder in {Path(name).parent for name in names}:
        (root / folder).mkdir(parents=True, exist_ok=True)

    def write(i: int) -> None:
        image = photo(np.random.default_rng([seed, i]), side)
        Image.fromarray(image).save(root / names[i], quality=90)

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count()) as pool:
        list(pool.map(write, range(n)))
    pd.DataFrame({"img_id": np.arange(1, n + 1), "img_filename": names, "y": y, "split": split, "place": place,
                  "place_filename": [f"place/{p}/{i}.jpg" for i, p in enumerate(place)]}).to_csv(
        root / "metadata.csv", index=False)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--n", type=int, default=12000)
    parser.add_argument("--side", type=int, default=320)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = write_photo_folder(Path(args.out), args.n, args.side, args.seed)
    size = sum(p.stat().st_size for p in root.rglob("*.jpg"))
    print(f"wrote {args.n} JPEGs ({args.side}x{args.side}, {size / args.n / 1e3:.1f} kB each) and "
          f"metadata.csv to {root}")


if __name__ == "__main__":
    main()
