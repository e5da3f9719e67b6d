"""safetensors_io.py - read and write .safetensors files with the standard library only.

A safetensors file is an 8-byte little-endian header length, a JSON header
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}
and the tensor bytes (little-endian, row-major).  Tensors are kept here as raw
bytes plus dtype and shape; f16/f32/bf16 values convert to Python floats with
struct when arithmetic is needed (merging).  Used on this machine (no numpy or
torch) to assemble Hugging Face folders and merge experts, and on the GPU
machine to write what training produced.
"""
import json
import struct

DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
              "U8": 1, "U16": 2, "BOOL": 1}


class Tensor:
    __slots__ = ("dtype", "shape", "data")

    def __init__(self, dtype, shape, data):
        n = 1
        for d in shape:
            n *= d
        if dtype not in DTYPE_SIZE:
            raise ValueError("unsupported dtype %s" % dtype)
        if len(data) != n * DTYPE_SIZE[dtype]:
            raise ValueError("%d bytes for %s %s" % (len(data), dtype, list(shape)))
        self.dtype, self.shape, self.data = dtype, tuple(shape), bytes(data)

    @property
    def numel(self):
        n = 1
        for d in self.shape:
            n *= d
        return n

    def floats(self):
        """The values as a list of Python floats (F16, BF16, F32)."""
        n = self.numel
        if self.dtype == "F16":
            return list(struct.unpack("<%de" % n, self.data))
        if self.dtype == "F32":
            return list(struct.unpack("<%df" % n, self.data))
        if self.dtype == "BF16":
            w = struct.unpack("<%dH" % n, self.data)
            return list(struct.unpack("<%df" % n, struct.pack("<%dI" % n, *[x << 16 for x in w])))
        raise ValueError("floats() needs F16, BF16 or F32, not %s" % self.dtype)

    @staticmethod
    def from_floats(values, shape, dtype="F16"):
        """Packs floats (round to nearest even) as F16 or F32."""
        n = len(values)
        if dtype == "F16":
            return Tensor("F16", shape, struct.pack("<%de" % n, *values))
        if dtype == "F32":
            return Tensor("F32", shape, struct.pack("<%df" % n, *values))
        raise ValueError("from_floats writes F16 or F32, not %s" % dtype)


def parse(buf, path="<buffer>"):
    """Returns (tensors: dict name -> Tensor in file order, metadata: dict)."""
    if len(buf) < 8:
        raise ValueError("%s: too short for a safetensors header" % path)
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    if hlen > len(buf) - 8:
        raise ValueError("%s: header length %d past the end" % (path, hlen))
    header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    base = 8 + hlen
    meta = header.pop("__metadata__", {}) or {}
    items = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    out = {}
    for name, h in items:
        b, e = h["data_offsets"]
        if not (0 <= b <= e <= len(buf) - base):
            raise ValueError("%s: tensor %s has offsets [%d, %d) outside the data" % (path, name, b, e))
        out[name] = Tensor(h["dtype"], h["shape"], buf[base + b:base + e])
    return out, meta


def load(path):
    with open(path, "rb") as f:
        return parse(f.read(), path)


def dumps(tensors, metadata=None):
    """tensors: dict name -> Tensor (order kept).  Returns the file's bytes."""
    header, off = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name, t in tensors.items():
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [off, off + len(t.data)]}
        off += len(t.data)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)  # data starts 8-aligned
    return b"".join([struct.pack("<Q", len(h)), h] + [t.data for t in tensors.values()])


def save(path, tensors, metadata=None):
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(dumps(tensors, metadata))
    import os
    os.replace(tmp, path)
