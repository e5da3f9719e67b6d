#!/usr/bin/env python3
"""bundle.py - carry files back from the GPU machine in pieces (standard library only).

    python3 train/bundle.py pack OUT_DIR FILE...     # OUT_DIR/bundle.tar.xz.000, .001, ... (<= 15 MiB each)
    python3 train/bundle.py unpack DEST_DIR PART...  # joins the parts in name order, extracts into DEST_DIR

The GPU machine returns at most 8 files of at most 16 MiB; the f16 base
weights alone are ~38 MB, so what training wrote travels as one xz-compressed
tar cut into 15 MiB parts.
"""
import io
import lzma
import os
import sys
import tarfile

PART = 15 << 20


def pack(out_dir, files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in files:
            tar.add(f, arcname=os.path.basename(f))
    raw = buf.getvalue()
    data = lzma.compress(raw, preset=1)
    os.makedirs(out_dir, exist_ok=True)
    for i in range(0, len(data), PART):
        with open(os.path.join(out_dir, "bundle.tar.xz.%03d" % (i // PART)), "wb") as f:
            f.write(data[i:i + PART])
    print("bundle: %d files, %.1f MB -> %.1f MB in %d parts" % (len(files), len(raw) / 1e6, len(data) / 1e6,
                                                              (len(data) + PART - 1) // PART))


def unpack(dest, parts):
    data = b"".join(open(p, "rb").read() for p in sorted(parts))
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data)), mode="r") as tar:
        for m in tar.getmembers():
            if not m.isfile() or os.path.basename(m.name) != m.name:
                raise SystemExit("bundle: refusing member %r" % m.name)
        tar.extractall(dest)
        print("bundle: %s -> %s" % (", ".join(m.name for m in tar.getmembers()), dest))


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] not in ("pack", "unpack"):
        sys.exit(__doc__.strip().splitlines()[2].strip() + "\n" + __doc__.strip().splitlines()[3].strip())
    (pack if sys.argv[1] == "pack" else unpack)(sys.argv[2], sys.argv[3:])
