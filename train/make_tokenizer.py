#!/usr/bin/env python3
"""make_tokenizer.py - Hugging Face tokenizer files from a GGUF vocabulary (standard library only).

    python3 train/make_tokenizer.py ../shared/vocab/ggml-vocab-starcoder.gguf OUT_DIR

Writes OUT_DIR/tokenizer.json (byte-level BPE: vocabulary, merges, the
control tokens as special added tokens, and StarCoder's pre-tokenizer:
Digits(individual_digits) then ByteLevel with the GPT-2 expression) and
OUT_DIR/tokenizer_config.json.  `codemoe convert` reads these back as
tokenizer.ggml.model "gpt2", pre "starcoder", with the same tokens, types and
merges as the GGUF vocabulary; tokenizers/transformers load them too.

<|endoftext|> (id 0) is BOS, EOS and UNK, as in StarCoder; training puts it
before every file, so tokenizer_config.json asks for it at the start of a
prompt (add_bos_token true).
"""
import json
import os
import struct
import sys

_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_kv(path):
    """The metadata key/values of a GGUF file (v2/v3), as Python values."""
    with open(path, "rb") as f:
        b = f.read()
    if b[:4] != b"GGUF":
        raise ValueError("%s: not a GGUF file" % path)
    pos = [4]

    def scalar(fmt):
        v = struct.unpack_from("<" + fmt, b, pos[0])[0]
        pos[0] += struct.calcsize("<" + fmt)
        return v

    def string():
        n = scalar("Q")
        s = b[pos[0]:pos[0] + n]
        pos[0] += n
        return s.decode("utf-8")

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            at, n = scalar("I"), scalar("Q")
            if at in _SCALAR:
                fmt = _SCALAR[at]
                out = list(struct.unpack_from("<%d%s" % (n, fmt), b, pos[0]))
                pos[0] += n * struct.calcsize("<" + fmt)
                return out
            return [value(at) for _ in range(n)]
        return scalar(_SCALAR[t])

    version = scalar("I")
    if version not in (2, 3):
        raise ValueError("%s: GGUF version %d" % (path, version))
    scalar("Q")  # tensors
    n_kv = scalar("Q")
    kv = {}
    for _ in range(n_kv):
        k = string()
        kv[k] = value(scalar("I"))
    return kv


CONTROL = 3


def build(kv):
    """(tokenizer.json dict, tokenizer_config.json dict) for a gpt2/starcoder vocabulary."""
    if kv.get("tokenizer.ggml.model") != "gpt2":
        raise ValueError("need a byte-level BPE (gpt2) vocabulary, not %r" % kv.get("tokenizer.ggml.model"))
    if kv.get("tokenizer.ggml.pre") != "starcoder":
        raise ValueError("this writer knows the starcoder pre-tokenizer, not %r" % kv.get("tokenizer.ggml.pre"))
    toks = kv["tokenizer.ggml.tokens"]
    types = kv["tokenizer.ggml.token_type"]
    merges = kv["tokenizer.ggml.merges"]
    vocab = {}
    for i, t in enumerate(toks):
        if t in vocab:
            raise ValueError("token %r appears twice (ids %d and %d)" % (t, vocab[t], i))
        vocab[t] = i
    added = [{"id": i, "content": toks[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i in range(len(toks)) if types[i] == CONTROL]
    eos = toks[kv.get("tokenizer.ggml.eos_token_id", 0)]
    bos = toks[kv.get("tokenizer.ggml.bos_token_id", 0)]
    unk = toks[kv.get("tokenizer.ggml.unknown_token_id", 0)]
    tj = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    tc = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos, "eos_token": eos, "unk_token": unk,
        "add_bos_token": True, "add_eos_token": False,
        "model_max_length": 1024,
        "clean_up_tokenization_spaces": False,
    }
    return tj, tc


def write(vocab_gguf, out_dir):
    tj, tc = build(read_gguf_kv(vocab_gguf))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc, f, ensure_ascii=False, indent=1)
    return len(tj["model"]["vocab"]), len(tj["model"]["merges"]), len(tj["added_tokens"])


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    n, m, a = write(sys.argv[1], sys.argv[2])
    print("%s: %d tokens, %d merges, %d special" % (sys.argv[2], n, m, a))
