#!/usr/bin/env python3
"""test_local.py - checks the standard-library half of train/ without a GPU or torch.

    python3 train/test_local.py [--codemoe ./codemoe] [--vocab V.gguf] [--data carry]

safetensors read/write, the merge arithmetic, tokenizer.json from the GGUF
vocabulary (through `codemoe convert`: same tokens, types, merges, pre-tokenizer
and the same token ids on corpus text), assemble.py on a tiny fake training
output (every folder converts), and the pretokenized streams (one EOS per file).
"""
import argparse
import array
import json
import lzma
import os
import random
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import assemble  # noqa: E402
import gguf_read  # noqa: E402
import make_tokenizer  # noqa: E402
import safetensors_io as sio  # noqa: E402

FAILS = []


def check(cond, what):
    print("%s %s" % ("ok  " if cond else "FAIL", what))
    if not cond:
        FAILS.append(what)


def test_safetensors():
    vals = [0.0, 1.0, -2.5, 0.333, 65504.0, -1e-3]
    t16 = sio.Tensor.from_floats(vals, (2, 3))
    t32 = sio.Tensor.from_floats(vals, (3, 2), "F32")
    bf = sio.Tensor("BF16", (2,), struct.pack("<2H", 0x3F80, 0xC020))  # 1.0, -2.5
    buf = sio.dumps({"a": t16, "b": t32, "c": bf}, {"k": "v"})
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    check((8 + hlen) % 8 == 0, "safetensors: data 8-aligned")
    got, meta = sio.parse(buf)
    check(list(got) == ["a", "b", "c"] and meta == {"k": "v"}, "safetensors: names and metadata")
    check(got["a"].shape == (2, 3) and got["a"].floats()[:3] == [0.0, 1.0, -2.5], "safetensors: f16 values")
    check(abs(got["a"].floats()[3] - 0.333) < 1e-3, "safetensors: f16 rounding")
    check(abs(got["b"].floats()[3] - 0.333) < 1e-7, "safetensors: f32 values")
    check(got["c"].floats() == [1.0, -2.5], "safetensors: bf16 values")
    try:
        sio.parse(buf[:-2])
        check(False, "safetensors: truncated file rejected")
    except ValueError:
        check(True, "safetensors: truncated file rejected")


def test_merge():
    base = [0.0, 0.0, 0.0, 1.0]
    e1 = [1.0, 0.1, -2.0, 1.0]
    e2 = [3.0, -0.1, 1.0, 1.5]
    check(assemble.mean([e1, e2]) == [2.0, 0.0, -0.5, 1.25], "merge: mean")
    # k = 0.5: e1 keeps 1.0 and -2.0; e2 keeps 3.0 and 1.0 (|0.5| ties lose to |1.0|)
    got = assemble.ties(base, [e1, e2], 0.5, 1.0)
    # entry 0: +1, +3 -> mean 2; entry 1: both trimmed -> 0; entry 2: -2 + 1 = -1 -> only -2 agrees;
    # entry 3: e1 delta 0 trimmed, e2 delta 0.5 trimmed (not in top half) -> base
    check(got == [2.0, 0.0, -2.0, 1.0], "merge: ties %s" % got)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def fake_dev(dev, cfg):
    random.seed(7)
    V, E, Fd, L = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    H, KV, D = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

    def rnd(shape, s=0.02):
        n = 1
        for x in shape:
            n *= x
        return sio.Tensor.from_floats([random.gauss(0, s) for _ in range(n)], shape)

    def ones(n):
        return sio.Tensor.from_floats([1.0] * n, (n,))
    T = {"model.embed_tokens.weight": rnd((V, E))}
    for i in range(L):
        p = "model.layers.%d." % i
        T[p + "input_layernorm.weight"] = ones(E)
        T[p + "self_attn.q_proj.weight"] = rnd((H * D, E))
        T[p + "self_attn.k_proj.weight"] = rnd((KV * D, E))
        T[p + "self_attn.v_proj.weight"] = rnd((KV * D, E))
        T[p + "self_attn.o_proj.weight"] = rnd((E, H * D))
        T[p + "post_attention_layernorm.weight"] = ones(E)
        T[p + "mlp.gate_proj.weight"] = rnd((Fd, E))
        T[p + "mlp.up_proj.weight"] = rnd((Fd, E))
        T[p + "mlp.down_proj.weight"] = rnd((E, Fd))
    T["model.norm.weight"] = ones(E)
    os.makedirs(dev, exist_ok=True)
    sio.save(os.path.join(dev, "base.safetensors"), T)
    for name in ("baseline", "c", "python", "rust"):
        mlp = {k: rnd(t.shape) for k, t in T.items() if ".mlp." in k}
        sio.save(os.path.join(dev, "mlp_%s.safetensors" % name), mlp)
    moe = {}
    for i in range(L):
        p = "model.layers.%d.block_sparse_moe." % i
        moe[p + "gate.weight"] = rnd((2, E))
        for j in range(2):
            moe[p + "experts.%d.w1.weight" % j] = rnd((Fd, E))
            moe[p + "experts.%d.w2.weight" % j] = rnd((E, Fd))
            moe[p + "experts.%d.w3.weight" % j] = rnd((Fd, E))
    sio.save(os.path.join(dev, "moe.safetensors"), moe, {"experts": "2", "top_k": "1"})


def test_pipeline(codemoe, vocab, corpus):
    tmp = tempfile.mkdtemp(prefix="cm_train_test_")
    with open(os.path.join(HERE, "model_config.json")) as f:
        cfg = json.load(f)
    cfg.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=8)
    cfg_path = os.path.join(tmp, "config.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    dev, out = os.path.join(tmp, "dev"), os.path.join(tmp, "hf")
    fake_dev(dev, cfg)
    run([sys.executable, os.path.join(HERE, "assemble.py"), "--dev", dev, "--out", out, "--vocab", vocab,
         "--config", cfg_path])
    names = sorted(n for n in os.listdir(out) if not n.startswith("_"))
    check(names == sorted(["base", "baseline", "c", "python", "rust", "merged_avg", "merged_ties", "moe"]),
          "assemble: folders %s" % names)
    base, _ = sio.load(os.path.join(dev, "base.safetensors"))
    c, _ = sio.load(os.path.join(out, "c", "model.safetensors"))
    mc, _ = sio.load(os.path.join(dev, "mlp_c.safetensors"))
    check(all(c[k].data == (mc[k].data if ".mlp." in k else base[k].data) for k in base),
          "assemble: expert = shared base tensors + its MLP")
    avg, _ = sio.load(os.path.join(out, "merged_avg", "model.safetensors"))
    k = "model.layers.1.mlp.up_proj.weight"
    ex = [sio.load(os.path.join(dev, "mlp_%s.safetensors" % n))[0][k].floats()[:5] for n in ("c", "python", "rust")]
    want = struct.unpack("<5e", struct.pack("<5e", *[sum(col) / 3 for col in zip(*ex)]))
    check(tuple(avg[k].floats()[:5]) == want, "assemble: merged_avg is the experts' mean")
    for n in names:
        g = os.path.join(tmp, n + ".gguf")
        run([codemoe, "convert", os.path.join(out, n), "-o", g, "--type", "f16"])
    kv_v = make_tokenizer.read_gguf_kv(vocab)
    kv_m = make_tokenizer.read_gguf_kv(os.path.join(tmp, "c.gguf"))
    for key in ("model", "pre", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id"):
        key = "tokenizer.ggml." + key
        check(kv_v.get(key) == kv_m.get(key), "tokenizer: %s as in %s" % (key, os.path.basename(vocab)))
    check(kv_m.get("tokenizer.ggml.add_bos_token") is True, "tokenizer: add_bos_token")
    check(kv_m.get("llama.feed_forward_length") == 64 and kv_m.get("llama.attention.head_count_kv") == 2,
          "convert: hyperparameters from config.json")
    sample = os.path.join(corpus, "python", "sample.txt")
    a = run([codemoe, "tokenize", "-m", vocab, "-f", sample])
    b = run([codemoe, "tokenize", "-m", os.path.join(tmp, "c.gguf"), "-f", sample])
    check(a == b and len(json.loads(a)) > 1000, "tokenizer: same ids on %s (%d tokens)" % (sample, len(json.loads(a))))
    ppl = run([codemoe, "perplexity", "-m", os.path.join(tmp, "merged_ties.gguf"), "-f", sample, "-c", "128",
               "--chunks", "2"])
    check("PPL" in ppl or "ppl" in ppl.lower(), "convert: a merged folder runs in codemoe perplexity")
    test_moe(codemoe, dev, tmp)
    print("(scratch files in %s)" % tmp)


def test_moe(codemoe, dev, tmp):
    """The MoE folder converts as Mixtral, and gguf_read (how train.py reads `codemoe upcycle`'s
    output) gets the stacked experts back in train.py's layout, values unchanged."""
    meta, t = gguf_read.read(os.path.join(tmp, "moe.gguf"))
    check(meta.get("llama.expert_count") == 2 and meta.get("llama.expert_used_count") == 1,
          "moe: converted as a 2-expert, top-1 Mixtral")
    moe, _ = sio.load(os.path.join(dev, "moe.safetensors"))
    typ, shape, raw = t["blk.1.ffn_down_exps.weight"]
    e1 = moe["model.layers.1.block_sparse_moe.experts.1.w2.weight"]
    half = len(raw) // 2
    check(typ == 1 and shape == (2,) + tuple(e1.shape) and raw[half:] == e1.data,
          "gguf_read: ffn_down_exps is (experts, hidden, ff), expert 1 = experts.1.w2 bit for bit")
    up = os.path.join(tmp, "up.gguf")
    run([codemoe, "upcycle", os.path.join(tmp, "base.gguf"), up, "--experts", "3", "--top-k", "2"])
    meta, t = gguf_read.read(up)
    typ, shape, raw = t["blk.0.ffn_gate_exps.weight"]
    check(meta.get("llama.expert_count") == 3 and shape[0] == 3 and raw[:len(raw) // 3] == raw[len(raw) // 3:2 * len(raw) // 3],
          "gguf_read: codemoe upcycle's experts are identical copies")
    bad = os.path.join(tmp, "bad.gguf")
    with open(up, "rb") as f, open(bad, "wb") as g:
        g.write(f.read()[:-1000])
    try:
        gguf_read.read(bad)
        check(False, "gguf_read: a truncated file is refused")
    except ValueError as e:
        check("truncated" in str(e), "gguf_read: a truncated file is refused (%s)" % e)


def test_data(data):
    tsv = os.path.join(data, "pretokenize.tsv")
    if not os.path.exists(tsv):
        print("skip: no %s" % tsv)
        return
    rows = [line.rstrip("\n").split("\t") for line in open(tsv)][1:]
    for lang, split, files, _bytes, tokens, written, bad in rows:
        a = array.array("H")
        with lzma.open(os.path.join(data, "%s.%s.u16.xz" % (lang, split))) as f:
            a.frombytes(f.read())
        if sys.byteorder != "little":
            a.byteswap()
        full = int(written) == int(tokens) + int(files)
        ok = len(a) == int(written) and a[0] == 0 and (not full or a.count(0) == int(files)) and bad == "0"
        check(ok and max(a) < 49152, "data: %s.%s: %d ids, %d files, EOS first%s" %
              (lang, split, len(a), int(files), ", one EOS per file" if full else ""))


def main():
    p = argparse.ArgumentParser()
    root = os.path.dirname(HERE)
    p.add_argument("--codemoe", default=os.path.join(root, "codemoe"))
    p.add_argument("--vocab", default=os.path.join(root, "..", "shared", "vocab", "ggml-vocab-starcoder.gguf"))
    p.add_argument("--corpus", default=os.path.join(root, "..", "shared", "corpus"))
    p.add_argument("--data", default=os.path.join(root, "carry"))
    a = p.parse_args()
    test_safetensors()
    test_merge()
    test_pipeline(a.codemoe, a.vocab, a.corpus)
    test_data(a.data)
    print("%d failed" % len(FAILS))
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    main()
