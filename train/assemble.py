#!/usr/bin/env python3
"""assemble.py - Hugging Face folders for every trained model, and the merged experts (stdlib only).

    python3 train/assemble.py --dev train_out/dev --out train_out/hf \
        --vocab ../shared/vocab/ggml-vocab-starcoder.gguf [--ties-k 0.2] [--ties-lambda 1.0]

Reads what training wrote (--dev): base.safetensors (every tensor, f16) and
mlp_<name>.safetensors (the MLP tensors of each continuation: baseline and
one per language).  Writes <out>/<name>/ with config.json
(train/model_config.json), model.safetensors (f16: the base's shared tensors
with that continuation's MLP tensors), tokenizer.json and
tokenizer_config.json (made from the GGUF vocabulary), for
  base            the base model itself (before any continuation),
  baseline        base + MLP continued on all languages,
  <lang>          base + MLP continued on <lang> (the language experts),
  merged_avg      base + the mean of the experts' MLP weights,
  merged_ties     base + TIES-merging of the experts' MLP task vectors
                  (Yadav et al., 2023: keep the top k of each task vector's
                  entries by magnitude, per tensor; elect a sign per entry
                  by the summed trimmed values; average the entries that
                  agree with it; scale by lambda).
Every folder converts with `codemoe convert <out>/<name> -o X.gguf`.
"""
import argparse
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_tokenizer  # noqa: E402
import safetensors_io as sio  # noqa: E402

LANGS = ("c", "cpp", "go", "java", "javascript", "python", "rust")


def is_mlp(name):
    return ".mlp." in name


def ties(base, experts, k, lam):
    """base: list of floats; experts: lists of floats.  Returns the merged list."""
    n = len(base)
    trimmed = []
    for e in experts:
        d = [x - b for x, b in zip(e, base)]
        keep = max(1, int(round(k * n)))
        thr = sorted(map(abs, d), reverse=True)[keep - 1]
        trimmed.append([x if abs(x) >= thr else 0.0 for x in d])
    out = []
    for j, col in enumerate(zip(*trimmed)):
        s = sum(col)
        if s > 0:
            agree = [x for x in col if x > 0]
        elif s < 0:
            agree = [x for x in col if x < 0]
        else:
            agree = []
        out.append(base[j] + (lam * sum(agree) / len(agree) if agree else 0.0))
    return out


def mean(experts):
    m = float(len(experts))
    return [sum(col) / m for col in zip(*experts)]


def write_folder(folder, cfg, tensors, tok_dir, meta):
    os.makedirs(folder, exist_ok=True)
    # codemoe convert (like gguf-py) names the model after _name_or_path
    cfg = dict(cfg, _name_or_path="codemoe-code-19m-" + os.path.basename(os.path.normpath(folder)))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    sio.save(os.path.join(folder, "model.safetensors"), tensors, dict(meta, format="pt"))
    for fn in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(tok_dir, fn), os.path.join(folder, fn))


def write_moe(path, base, cfg, out, tok_dir):
    """moe: the base's shared tensors with the token-level MoE's experts and routers (train.py moe),
    as a MixtralForCausalLM folder."""
    moe, meta = sio.load(path)
    n, k = int(meta["experts"]), int(meta["top_k"])
    for i in range(cfg["num_hidden_layers"]):
        for j in range(n):
            for w, src in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
                t = moe.get("model.layers.%d.block_sparse_moe.experts.%d.%s.weight" % (i, j, w))
                ref = base["model.layers.%d.mlp.%s.weight" % (i, src)]
                if t is None or t.shape != ref.shape:
                    raise SystemExit("%s: layer %d expert %d %s is missing or misshapen" % (path, i, j, w))
    mcfg = dict(cfg, architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=n,
                num_experts_per_tok=k, router_aux_loss_coef=0.01, output_router_logits=False)
    tensors = {kk: t for kk, t in base.items() if not is_mlp(kk)}
    tensors.update(moe)
    write_folder(os.path.join(out, "moe"), mcfg, tensors, tok_dir, {"model": "moe"})
    print("moe: base + %d experts (top %d) of %s" % (n, k, path))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dev", required=True, help="folder with base.safetensors and mlp_<name>.safetensors")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab", required=True, help="the GGUF vocabulary the data was tokenized with")
    p.add_argument("--config", default=os.path.join(HERE, "model_config.json"))
    p.add_argument("--ties-k", type=float, default=0.2)
    p.add_argument("--ties-lambda", type=float, default=1.0)
    p.add_argument("--no-merge", action="store_true")
    a = p.parse_args()
    with open(a.config) as f:
        cfg = json.load(f)
    tok_dir = os.path.join(a.out, "_tokenizer")
    make_tokenizer.write(a.vocab, tok_dir)
    base, _ = sio.load(os.path.join(a.dev, "base.safetensors"))
    mlp_names = [k for k in base if is_mlp(k)]
    write_folder(os.path.join(a.out, "base"), cfg, base, tok_dir, {"model": "base"})
    print("base: %d tensors" % len(base))
    conts = {}
    for name in ("baseline",) + LANGS:
        path = os.path.join(a.dev, "mlp_%s.safetensors" % name)
        if not os.path.exists(path):
            print("%s: no %s; skipped" % (name, path))
            continue
        mlp, meta = sio.load(path)
        if sorted(mlp) != sorted(mlp_names):
            raise SystemExit("%s: MLP tensors do not match the base's" % path)
        for k, t in mlp.items():
            if t.shape != base[k].shape or t.dtype != base[k].dtype:
                raise SystemExit("%s: %s is %s %s, the base's %s %s" % (path, k, t.dtype, t.shape,
                                                                       base[k].dtype, base[k].shape))
        conts[name] = mlp
        tensors = {k: (mlp[k] if is_mlp(k) else t) for k, t in base.items()}
        write_folder(os.path.join(a.out, name), cfg, tensors, tok_dir, {"model": name})
        print("%s: base + MLP of %s" % (name, path))
    moe_path = os.path.join(a.dev, "moe.safetensors")
    if os.path.exists(moe_path):
        write_moe(moe_path, base, cfg, a.out, tok_dir)
    experts = [n for n in LANGS if n in conts]
    if a.no_merge or len(experts) < 2:
        return
    avg, tie = {}, {}
    for k in mlp_names:
        b = base[k].floats()
        ex = [conts[n][k].floats() for n in experts]
        avg[k] = sio.Tensor.from_floats(mean(ex), base[k].shape)
        tie[k] = sio.Tensor.from_floats(ties(b, ex, a.ties_k, a.ties_lambda), base[k].shape)
        print("  merged %s" % k, flush=True)
    for name, mt, info in (("merged_avg", avg, "mean"),
                           ("merged_ties", tie, "ties k=%g lambda=%g" % (a.ties_k, a.ties_lambda))):
        tensors = {k: (mt[k] if is_mlp(k) else t) for k, t in base.items()}
        write_folder(os.path.join(a.out, name), cfg, tensors, tok_dir,
                     {"model": name, "merge": info, "experts": ",".join(experts)})
        print("%s: %s of %s" % (name, info, ",".join(experts)))


if __name__ == "__main__":
    main()
