"""gguf_read.py - reads F32/F16 tensors of a GGUF file (standard library only).

train.py starts the token-level MoE from what `codemoe upcycle` wrote; only
the tensor directory and the F32/F16 data are needed, so this reads the
header, skips the metadata values and returns each tensor's shape (numpy
order: the GGUF dimensions reversed) and raw bytes.
"""
import struct

GGUF_MAGIC = b"GGUF"
TYPE_SIZES = {0: 4, 1: 2}  # ggml F32, F16
SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


class Reader:
    def __init__(self, data):
        self.d, self.o = data, 0

    def take(self, fmt):
        v = struct.unpack_from("<" + fmt, self.d, self.o)
        self.o += struct.calcsize("<" + fmt)
        return v[0]

    def string(self):
        n = self.take("Q")
        s = self.d[self.o:self.o + n]
        if len(s) != n:
            raise ValueError("truncated string")
        self.o += n
        return s.decode("utf-8")

    def value(self, t):
        if t in SCALAR:
            return self.take(SCALAR[t])
        if t == 8:
            return self.string()
        if t == 9:
            et, n = self.take("I"), self.take("Q")
            return [self.value(et) for _ in range(n)]
        raise ValueError("unknown metadata type %d" % t)


def read(path):
    """Returns (metadata dict, {name: (type, shape, bytes)})."""
    with open(path, "rb") as f:
        data = f.read()
    r = Reader(data)
    if data[:4] != GGUF_MAGIC:
        raise ValueError("%s: not a GGUF file" % path)
    r.o = 4
    version, n_tensors, n_kv = r.take("I"), r.take("Q"), r.take("Q")
    if version < 2:
        raise ValueError("%s: GGUF version %d" % (path, version))
    meta = {}
    for _ in range(n_kv):
        key = r.string()
        meta[key] = r.value(r.take("I"))
    infos = []
    for _ in range(n_tensors):
        name, nd = r.string(), r.take("I")
        dims = [r.take("Q") for _ in range(nd)]
        infos.append((name, dims, r.take("I"), r.take("Q")))
    align = meta.get("general.alignment", 32)
    base = (r.o + align - 1) // align * align
    tensors = {}
    for name, dims, t, off in infos:
        if t not in TYPE_SIZES:
            continue  # quantized: not needed here
        n = 1
        for x in dims:
            n *= x
        start = base + off
        raw = data[start:start + n * TYPE_SIZES[t]]
        if len(raw) != n * TYPE_SIZES[t]:
            raise ValueError("%s: tensor %s is truncated" % (path, name))
        tensors[name] = (t, tuple(reversed(dims)), raw)
    return meta, tensors
