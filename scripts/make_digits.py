#!/usr/bin/env python3
"""Writes data/digits.bin: the 8x8 handwritten digits bundled with scikit-learn, for
examples/train_digits.rs.

`sklearn.datasets.load_digits()` reads a file shipped inside the scikit-learn package (1797
images of 8x8 pixels with values 0..16, labels 0..9; no download). The images are split once,
stratified by label with a fixed seed, into 1437 training and 360 test images, and written
training images first:

    offset  size        field
    0       8           magic b"WGDIGIT1"
    8       4           n_total  (u32, little endian)
    12      4           n_train  (u32)
    16      4           height   (u32)
    20      4           width    (u32)
    24      n*h*w       pixels, u8 in 0..=16, image after image, row-major
    ...     n           labels, u8 in 0..=9

Usage: pip install scikit-learn && python3 scripts/make_digits.py
"""

import struct
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

N_TEST = 360
SEED = 0


def main() -> None:
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # (1797, 8, 8), integer values 0..16
    labels = digits.target.astype(np.uint8)
    assert np.array_equal(images, digits.images), "pixels are integers"
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=N_TEST, stratify=labels, random_state=SEED)
    order = np.concatenate([train, test])
    n, h, w = images.shape
    out = Path(__file__).resolve().parent.parent / "data" / "digits.bin"
    out.parent.mkdir(exist_ok=True)
    with open(out, "wb") as f:
        f.write(b"WGDIGIT1")
        f.write(struct.pack("<4I", n, len(train), h, w))
        f.write(images[order].tobytes())
        f.write(labels[order].tobytes())
    print(f"wrote {out}: {n} images ({len(train)} train, {len(test)} test), {h}x{w}, "
          f"{out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
