#!/usr/bin/env python3
"""train.py - trains codemoe's own small code models on one NVIDIA GPU (PyTorch).

    python3 train/train.py smoke --data carry --out /tmp/smoke
    python3 train/train.py base  --data carry --out OUT [--seconds S | --steps N] [--resume]
    python3 train/train.py cont  --data carry --out OUT --init OUT/base.safetensors
                                 --names baseline,c,cpp,go,java,javascript,python,rust [--resume]

Data: <data>/<lang>.{train,valid}.u16.xz from tools/pretokenize (StarCoder
token ids, <|endoftext|> = 0 before every file).  Model: a Llama decoder
(train/model_config.json) whose parameters carry Hugging Face's
LlamaForCausalLM names, so the safetensors written here plus config.json and
the tokenizer files are a folder `codemoe convert` and transformers read.

Phases:
  base   all seven languages, every parameter trained, cosine schedule.
         Writes OUT/base.safetensors (f16: every tensor).  The rest of the
         pipeline starts from these f16 values, so the frozen tensors that
         every expert shares are exactly what the pack stores.
  cont   for each name, a continuation of the base of the same length:
         "baseline" on all languages, "<lang>" on that language only; only
         the MLP weights (gate/up/down) train, embeddings, attention and
         norms stay frozen (checked bit for bit).  Writes
         OUT/mlp_<name>.safetensors (f16, the 24 MLP tensors).
  smoke  a few steps of everything on a tiny batch, without torch.compile:
         export, reload, agreement with transformers' LlamaForCausalLM,
         and an interrupted-then-resumed run equal to an uninterrupted one.
Every phase appends evaluation (per-language validation loss/perplexity)
and timings to OUT/results.json.

Resuming: every --ckpt-every steps (and when --deadline is reached, which
then exits with status 3) the phase saves OUT/ckpt_<phase>.pt (fp32 weights,
optimizer, step, schedule length); --resume continues from it.  A `cont`
run skips names whose mlp_<name>.safetensors already exists, so a long run
may be cut into pieces of a few minutes each.
"""
import argparse
import json
import lzma
import math
import os
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import safetensors_io as sio  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

LANGS = ("c", "cpp", "go", "java", "javascript", "python", "rust")
DEV = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: only for the small local pipeline test
EOT, FIM_PRE, FIM_MID, FIM_SUF = 0, 1, 2, 3  # StarCoder's <|endoftext|>, <fim_prefix>, <fim_middle>, <fim_suffix>
T0 = time.time()
LOG = None


def log(*a):
    s = "[%7.1fs] " % (time.time() - T0) + " ".join(str(x) for x in a)
    print(s, flush=True)
    if LOG:
        with open(LOG, "a") as f:
            f.write(s + "\n")


def sync():
    if DEV == "cuda":
        torch.cuda.synchronize()


class Incomplete(Exception):
    pass


# ------------------------------------------------------------------ model

class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        dt = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dt)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        E, H, KV, D = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        self.H, self.KV, self.D = H, KV, D
        self.q_proj = nn.Linear(E, H * D, bias=False)
        self.k_proj = nn.Linear(E, KV * D, bias=False)
        self.v_proj = nn.Linear(E, KV * D, bias=False)
        self.o_proj = nn.Linear(H * D, E, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.KV, self.D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.KV, self.D).transpose(1, 2)
        cos, sin = cos[:T].to(q.dtype), sin[:T].to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.KV != self.H:  # Hugging Face's repeat_kv: kv head j serves q heads j*r .. j*r+r-1
            k = k.repeat_interleave(self.H // self.KV, dim=1)
            v = v.repeat_interleave(self.H // self.KV, dim=1)
        if hasattr(F, "scaled_dot_product_attention"):
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # torch < 2.0 (Debian's, for the CPU test)
            a = (q @ k.transpose(-1, -2)) / math.sqrt(self.D)
            a = a.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            o = a.softmax(-1) @ v
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.H * self.D))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        E, Fd = c["hidden_size"], c["intermediate_size"]
        self.gate_proj = nn.Linear(E, Fd, bias=False)
        self.up_proj = nn.Linear(E, Fd, bias=False)
        self.down_proj = nn.Linear(Fd, E, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class SparseMoE(nn.Module):
    """Mixtral's block_sparse_moe: softmax router, top-k, weights renormalised over the k.  The experts
    are small, so every expert runs on every token (three batched products) and the router's weights
    (zero for the unchosen) mix them: faster on a GPU than gathering tokens per expert."""

    def __init__(self, c):
        super().__init__()
        E, Fd, n = c["hidden_size"], c["intermediate_size"], c["num_local_experts"]
        self.k = c["num_experts_per_tok"]
        self.gate = nn.Linear(E, n, bias=False)
        self.w1 = nn.Parameter(torch.empty(n, Fd, E))  # gate_proj of each expert
        self.w3 = nn.Parameter(torch.empty(n, Fd, E))  # up_proj
        self.w2 = nn.Parameter(torch.empty(n, E, Fd))  # down_proj

    def forward(self, x):
        shape, n = x.shape, self.w1.shape[0]
        x = x.reshape(-1, shape[-1])
        prob = self.gate(x).float().softmax(-1)
        top_w, top_i = prob.topk(self.k, -1)
        mix = torch.zeros_like(prob).scatter(-1, top_i, top_w / top_w.sum(-1, keepdim=True))
        # Switch-style balance: n * sum_e (share of choices for e) * (mean router probability of e)
        share = torch.zeros_like(prob).scatter(-1, top_i, 1.0).mean(0) / self.k
        aux = n * (share * prob.mean(0)).sum()
        h = F.silu(torch.einsum("te,nfe->ntf", x, self.w1)) * torch.einsum("te,nfe->ntf", x, self.w3)
        y = torch.einsum("ntf,nef->nte", h, self.w2)
        return (y * mix.t().to(y.dtype)[:, :, None]).sum(0).reshape(shape), aux


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        if c.get("num_local_experts"):
            self.block_sparse_moe = SparseMoE(c)
        else:
            self.mlp = MLP(c)

    def ffn(self, x):
        """The feed-forward's output and its load-balancing loss (0 for a dense layer)."""
        return self.block_sparse_moe(x) if hasattr(self, "block_sparse_moe") else (self.mlp(x), 0.0)


class Inner(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed_tokens = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.layers = nn.ModuleList([Layer(c) for _ in range(c["num_hidden_layers"])])
        self.norm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])


class CodeLlama(nn.Module):
    """LlamaForCausalLM with tied embeddings; state_dict names are Hugging Face's."""

    def __init__(self, c):
        super().__init__()
        self.c = c
        self.model = Inner(c)
        D, theta, n = c["head_dim"], float(c["rope_theta"]), c["max_position_embeddings"]
        inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
        f = torch.outer(torch.arange(n, dtype=torch.float32), inv)
        emb = torch.cat((f, f), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        std, L = c["initializer_range"], c["num_hidden_layers"]
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                continue
            s = std / math.sqrt(2 * L) if name.endswith(("o_proj.weight", "down_proj.weight", ".w2")) else std
            nn.init.normal_(p, 0.0, s)

    def forward(self, idx, targets=None):
        m = self.model
        h, aux = m.embed_tokens(idx), 0.0
        for layer in m.layers:
            h = h + layer.self_attn(layer.input_layernorm(h), self.cos, self.sin)
            f, a = layer.ffn(layer.post_attention_layernorm(h))
            h, aux = h + f, aux + a
        logits = F.linear(m.norm(h), m.embed_tokens.weight)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        if self.c.get("num_local_experts"):
            loss = loss + self.c.get("router_aux_loss_coef", 0.01) * aux / len(m.layers)
        return loss


def is_mlp(name):
    """The feed-forward tensors: what continuations train (the MoE's experts and router too)."""
    return ".mlp." in name or ".block_sparse_moe." in name


# ------------------------------------------------------------------ weights in and out

def to_st(t):
    t = t.detach().to(torch.float16).contiguous().cpu()
    return sio.Tensor("F16", tuple(t.shape), t.view(torch.uint8).numpy().tobytes())


def from_st(t):
    dt = {"F16": torch.float16, "F32": torch.float32, "BF16": torch.bfloat16}[t.dtype]
    return torch.frombuffer(bytearray(t.data), dtype=dt).view(t.shape).float()


def save_weights(model, path, only=None, meta=None):
    sd = model.state_dict()
    tensors = {k: to_st(v) for k, v in sd.items() if only is None or only(k)}
    sio.save(path, tensors, dict(meta or {}, format="pt"))
    return sum(t.numel for t in tensors.values())


def load_weights(model, path, only=None):
    tensors, _ = sio.load(path)
    sd = model.state_dict()
    n = 0
    with torch.no_grad():
        for k, t in tensors.items():
            if only is not None and not only(k):
                continue
            if k not in sd or tuple(sd[k].shape) != t.shape:
                raise ValueError("%s: unexpected tensor %s %s" % (path, k, t.shape))
            sd[k].copy_(from_st(t))
            n += 1
    want = [k for k in sd if only is None or only(k)]
    if n != len(want):
        raise ValueError("%s: %d of %d tensors" % (path, n, len(want)))


def round_to_f16(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())


def write_hf_config(cfg, folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


# ------------------------------------------------------------------ data

def read_u16(path):
    with lzma.open(path) as f:
        return np.frombuffer(f.read(), dtype="<u2")


class Data:
    """Token streams of several languages on the GPU; random windows."""

    def __init__(self, data_dir, langs, split, device, max_tokens=0):
        arrs, self.langs = [], list(langs)
        for lang in self.langs:
            a = read_u16(os.path.join(data_dir, "%s.%s.u16.xz" % (lang, split)))
            if max_tokens:
                a = a[:max_tokens]
            arrs.append(a.astype(np.int32))
        self.lens = torch.tensor([len(a) for a in arrs], device=device)
        self.starts = torch.tensor(np.cumsum([0] + [len(a) for a in arrs[:-1]]), device=device)
        self.tok = torch.from_numpy(np.concatenate(arrs)).to(device)
        self.device = device
        self.per_lang = {lang: self.tok[s:s + n] for lang, s, n in
                         zip(self.langs, self.starts.tolist(), self.lens.tolist())}

    def n_tokens(self):
        return int(self.lens.sum())

    def batch(self, g, B, T, fim_rate=0.0):
        li = torch.randint(0, len(self.langs), (B,), generator=g, device=self.device)
        span = (self.lens[li] - T - 1).clamp(min=1)
        off = self.starts[li] + (torch.rand(B, generator=g, device=self.device) * span).long()
        w = self.tok[off[:, None] + torch.arange(T + 1, device=self.device)].long()
        if fim_rate > 0:
            w = fim_permute(w, g, fim_rate)[0]
        return w[:, :-1], w[:, 1:]


def fim_permute(w, g, rate):
    """Fill-in-the-middle training rows, as StarCoder/SantaCoder made them, on a whole batch at once.

    w: (B, N) windows of the token streams.  A `rate` share of the rows is rearranged, half of those
    as prefix-suffix-middle  <fim_prefix> P <fim_suffix> S <fim_middle> M
    and half as suffix-prefix-middle  <fim_prefix> <fim_suffix> S <fim_middle> P M,
    where P M S is the window's first document (up to its <|endoftext|>, which then follows the
    middle, so the model learns to end an infill) cut at two uniform points.  Such a row is made from
    its first N-3 tokens plus the three sentinels, so every row stays N long; the others are
    unchanged.  Returns (rows, mode, a, b, e): mode 0 plain, 1 PSM, 2 SPM; cuts a <= b <= e."""
    B, N = w.shape
    L, dev = N - 3, w.device
    eot = w[:, 1:L] == EOT
    e = torch.where(eot.any(1), eot.float().argmax(1) + 1, torch.full((B,), L, device=dev, dtype=torch.long))
    r = torch.rand(B, 4, generator=g, device=dev)
    cut = torch.minimum((r[:, :2] * (e[:, None] + 1).float()).long(), e[:, None])
    a, b = cut.min(1).values, cut.max(1).values
    mode = torch.where(r[:, 2] < rate, torch.where(r[:, 3] < 0.5, 1, 2), 0)
    p = torch.arange(N, device=dev)[None, :]
    a, b, e = a[:, None], b[:, None], e[:, None]
    s = e - b  # the suffix's length; negative source indices stand for the sentinels
    psm = torch.where(p == 0, -1, torch.where(p <= a, p - 1, torch.where(p == a + 1, -3, torch.where(
        p <= a + 1 + s, b + p - a - 2, torch.where(p == a + 2 + s, -2, torch.where(p <= e + 2, p - 3 - s, p - 3))))))
    spm = torch.where(p == 0, -1, torch.where(p == 1, -3, torch.where(p <= 1 + s, b + p - 2, torch.where(
        p == 2 + s, -2, torch.where(p <= e + 2, p - 3 - s, p - 3)))))
    m = mode[:, None]
    idx = torch.where(m == 0, p.expand(B, N), torch.where(m == 1, psm, spm))
    out = w.gather(1, idx.clamp(min=0))
    for code, tok in ((-1, FIM_PRE), (-2, FIM_MID), (-3, FIM_SUF)):
        out = torch.where(idx == code, torch.full_like(out, tok), out)
    return out, mode, a[:, 0], b[:, 0], e[:, 0]


def fim_check(w, out, mode, a, b, e):
    """The rearranged rows hold exactly their window's tokens: prefix + middle + suffix == document."""
    for i in range(w.shape[0]):
        row, src, ai, bi, ei = out[i].tolist(), w[i].tolist(), int(a[i]), int(b[i]), int(e[i])
        si = ei - bi
        if mode[i] == 0:
            assert row == src
            continue
        if mode[i] == 1:
            pre, suf, mid = row[1:ai + 1], row[ai + 2:ai + 2 + si], row[ai + 3 + si:ei + 3]
            assert row[0] == FIM_PRE and row[ai + 1] == FIM_SUF and row[ai + 2 + si] == FIM_MID
        else:
            suf, pm = row[2:2 + si], row[3 + si:ei + 3]
            pre, mid = pm[:ai], pm[ai:]
            assert row[:2] == [FIM_PRE, FIM_SUF] and row[2 + si] == FIM_MID
        assert pre + mid + suf == src[:ei], i
        assert row[ei + 3:] == src[ei:len(src) - 3], i


@torch.no_grad()
def evaluate(model, valid, T=512, max_windows=128, bs=32):
    """Mean next-token loss on consecutive windows of each language's validation stream."""
    model.eval()
    out = {}
    for lang, s in valid.per_lang.items():
        n = min((len(s) - 1) // T, max_windows)
        x = s[:n * T].view(n, T).long()
        y = s[1:n * T + 1].view(n, T).long()
        tot = 0.0
        for i in range(0, n, bs):
            with torch.autocast(DEV, dtype=torch.bfloat16):
                logits = model(x[i:i + bs])
            tot += F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y[i:i + bs].reshape(-1),
                                   reduction="sum").item()
        loss = tot / (n * T)
        out[lang] = {"loss": round(loss, 5), "ppl": round(math.exp(loss), 4), "tokens": n * T}
    model.train()
    return out


# ------------------------------------------------------------------ training

def lr_at(step, total, peak, warmup, min_frac):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def train_phase(model, data, a, name, trainable, steps, seconds, peak, warmup, batch, ckpt, deadline,
                compile_model):
    """Trains the parameters for which trainable(name) holds.  Returns stats."""
    params = []
    for n, p in model.named_parameters():
        p.requires_grad_(trainable(n))
        if p.requires_grad:
            params.append((n, p))
    decay = [p for n, p in params if p.dim() >= 2]
    no_decay = [p for n, p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": a.wd}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    fused = {"fused": True} if DEV == "cuda" else {}
    opt = torch.optim.AdamW(groups, lr=peak, betas=(0.9, 0.95), eps=1e-8, **fused)
    total, step0 = steps, 0
    if a.resume and os.path.exists(ckpt):
        st = torch.load(ckpt, map_location=DEV, weights_only=False)
        if st["phase"] != name:
            raise ValueError("%s holds phase %s, not %s" % (ckpt, st["phase"], name))
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        total, step0 = st["total"], st["step"]
        log("%s: resumed at step %d of %d from %s" % (name, step0, total, ckpt))
        seconds = 0  # the schedule length is fixed now
    n_train = sum(p.numel() for _, p in params)
    log("%s: %d trainable parameters (%d tensors), %d tokens of data, batch %dx%d, peak lr %g, "
        "%s steps" % (name, n_train, len(params), data.n_tokens(), batch, a.ctx, peak,
                      "%d" % total if not seconds else "<= %d (time budget %ds)" % (total, seconds)))
    fwd = model
    if compile_model:
        try:
            fwd = torch.compile(model)
        except Exception as e:  # noqa: BLE001
            log("torch.compile unavailable (%s); eager" % e)
    g = torch.Generator(device=DEV)
    model.train()
    t_start, t_meas, s_meas = time.time(), None, None
    losses, step = [], step0

    def save_ckpt(at):
        torch.save({"phase": name, "model": model.state_dict(), "opt": opt.state_dict(), "step": at,
                    "total": total}, ckpt + ".tmp")
        os.replace(ckpt + ".tmp", ckpt)

    while step < total:
        lr = lr_at(step, total, peak, warmup, a.min_lr)
        for gr in opt.param_groups:
            gr["lr"] = lr
        g.manual_seed(a.seed * 1000003 + step * 7919 + zlib.crc32(name.encode()) % 9973)
        x, y = data.batch(g, batch, a.ctx, a.fim_rate)
        if step == step0 and fwd is not model:
            try:
                with torch.autocast(DEV, dtype=torch.bfloat16):
                    loss = fwd(x, y)
                loss.backward()
            except Exception as e:  # noqa: BLE001
                log("torch.compile failed (%s); eager" % (str(e).splitlines() or [""])[0][:200])
                fwd = model
                opt.zero_grad(set_to_none=True)
                with torch.autocast(DEV, dtype=torch.bfloat16):
                    loss = fwd(x, y)
                loss.backward()
        else:
            with torch.autocast(DEV, dtype=torch.bfloat16):
                loss = fwd(x, y)
            loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.detach())
        if step - step0 == 10:
            sync()
            t_meas, s_meas = time.time(), step
        if seconds and t_meas and step - step0 == 40:
            sync()
            rate = (step - s_meas) / (time.time() - t_meas)
            total = min(total, step + int(rate * (seconds - (time.time() - t_start))))
            log("%s: %.2f steps/s, %.0f tokens/s: schedule set to %d steps (%.1fM tokens)"
                % (name, rate, rate * batch * a.ctx, total, total * batch * a.ctx / 1e6))
        if step % a.log_every == 0 or step == total:
            cur = torch.stack(losses).float().mean().item()
            losses = []
            el = time.time() - t_start
            log("%s: step %d/%d loss %.4f lr %.2e %.0f tok/s" %
                (name, step, total, cur, lr, (step - step0) * batch * a.ctx / max(el, 1e-9)))
            if not math.isfinite(cur):
                raise FloatingPointError("%s: loss is %s at step %d" % (name, cur, step))
        if a.ckpt_every and step % a.ckpt_every == 0 and step < total:
            save_ckpt(step)
        if deadline and time.time() > deadline and step < total:
            save_ckpt(step)
            raise Incomplete("%s: deadline reached at step %d of %d; saved %s (run again with --resume)"
                             % (name, step, total, ckpt))
    sync()
    el = time.time() - t_start
    for _, p in params:
        p.requires_grad_(False)
    return {"steps": total, "steps_this_run": total - step0, "tokens": total * batch * a.ctx,
            "seconds": round(el, 1), "tokens_per_s": round((total - step0) * batch * a.ctx / el),
            "batch": batch, "ctx": a.ctx, "peak_lr": peak, "trainable_params": n_train}


def results_update(out, key, value):
    path = os.path.join(out, "results.json")
    r = {}
    if os.path.exists(path):
        with open(path) as f:
            r = json.load(f)
    r[key] = value
    with open(path + ".tmp", "w") as f:
        json.dump(r, f, indent=1)
    os.replace(path + ".tmp", path)


def fmt_ppl(ev):
    return " ".join("%s=%.3f" % (k, v["ppl"]) for k, v in ev.items())


# ------------------------------------------------------------------ phases

def phase_base(a, cfg, valid):
    path = os.path.join(a.out, "base.safetensors")
    if os.path.exists(path) and not a.force:
        log("base: %s exists; skipped" % path)
        return
    torch.manual_seed(a.seed)
    model = CodeLlama(cfg).to(DEV)
    data = Data(a.data, LANGS, "train", DEV, a.max_train_tokens)
    st = train_phase(model, data, a, "base", lambda n: True, a.steps, a.seconds, a.lr, a.warmup, a.batch,
                     os.path.join(a.out, "ckpt_base.pt"), a.deadline_t, a.compile)
    round_to_f16(model)
    n = save_weights(model, path, meta={"phase": "base", "steps": st["steps"]})
    st["eval"] = evaluate(model, valid, a.ctx, a.eval_windows)
    st["params"] = n
    log("base: saved %s (%d parameters); valid ppl %s" % (path, n, fmt_ppl(st["eval"])))
    results_update(a.out, "base", st)


def phase_cont(a, cfg, valid):
    model = CodeLlama(cfg).to(DEV)
    load_weights(model, a.init)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    ev0 = evaluate(model, valid, a.ctx, a.eval_windows)
    log("cont: start %s; valid ppl %s" % (a.init, fmt_ppl(ev0)))
    results_update(a.out, "init_eval", {"init": a.init, "eval": ev0})
    for name in a.names.split(","):
        path = os.path.join(a.out, "mlp_%s.safetensors" % name)
        if os.path.exists(path) and not a.force:
            log("cont: %s exists; skipped" % path)
            continue
        langs = LANGS if name == "baseline" else (name,)
        if name != "baseline" and name not in LANGS:
            raise ValueError("unknown continuation %r (baseline or one of %s)" % (name, ",".join(LANGS)))
        model.load_state_dict(base)
        data = Data(a.data, langs, "train", DEV, a.max_train_tokens)
        st = train_phase(model, data, a, "cont_" + name, is_mlp, a.steps, 0, a.lr, a.warmup, a.batch,
                         os.path.join(a.out, "ckpt_cont_%s.pt" % name), a.deadline_t, a.compile)
        round_to_f16(model)
        sd = model.state_dict()
        for k, v in base.items():
            if not is_mlp(k) and not torch.equal(sd[k], v):
                raise AssertionError("cont %s changed frozen tensor %s" % (name, k))
        save_weights(model, path, only=is_mlp, meta={"phase": "cont", "name": name, "steps": st["steps"]})
        st["eval"] = evaluate(model, valid, a.ctx, a.eval_windows)
        st["langs"] = list(langs)
        log("cont %s: saved %s; valid ppl %s" % (name, path, fmt_ppl(st["eval"])))
        results_update(a.out, "cont_" + name, st)
        del data
        if DEV == "cuda":
            torch.cuda.empty_cache()


def moe_config(cfg, a):
    return dict(cfg, architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=a.experts,
                num_experts_per_tok=a.top_k, router_aux_loss_coef=a.aux_coef, output_router_logits=False)


def load_upcycled(model, path):
    """The experts and routers `codemoe upcycle` wrote (F32/F16 GGUF, llama.cpp's stacked layout:
    ffn_gate_exps is (experts, ff, hidden) in numpy order, what SparseMoE.w1 holds)."""
    import gguf_read
    meta, tensors = gguf_read.read(path)
    names = {"ffn_gate_inp": "gate.weight", "ffn_gate_exps": "w1", "ffn_up_exps": "w3", "ffn_down_exps": "w2"}
    sd, n = model.state_dict(), 0
    with torch.no_grad():
        for i in range(len(model.model.layers)):
            for g, t in names.items():
                key = "model.layers.%d.block_sparse_moe.%s" % (i, t)
                typ, shape, raw = tensors["blk.%d.%s.weight" % (i, g)]
                v = torch.frombuffer(bytearray(raw), dtype=torch.float32 if typ == 0 else torch.float16)
                if tuple(sd[key].shape) != shape:
                    raise ValueError("%s: %s is %s, the model wants %s" % (path, g, shape, tuple(sd[key].shape)))
                sd[key].copy_(v.view(shape).float())
                n += 1
    return meta, n


def moe_export(model):
    """The MoE tensors under Hugging Face's MixtralForCausalLM names (f16)."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        moe, pre = layer.block_sparse_moe, "model.layers.%d.block_sparse_moe." % i
        out[pre + "gate.weight"] = to_st(moe.gate.weight)
        for j in range(moe.w1.shape[0]):
            for w in ("w1", "w2", "w3"):
                out[pre + "experts.%d.%s.weight" % (j, w)] = to_st(getattr(moe, w)[j])
    return out


def phase_moe(a, cfg, valid):
    """A token-level MoE from the base: `codemoe upcycle`'s experts and router (--upcycled), the base's
    other tensors (--init), then the experts and routers trained on all languages, the rest frozen."""
    path = os.path.join(a.out, "moe.safetensors")
    if os.path.exists(path) and not a.force:
        log("moe: %s exists; skipped" % path)
        return
    dense = CodeLlama(cfg).to(DEV)
    load_weights(dense, a.init)
    mcfg = moe_config(cfg, a)
    model = CodeLlama(mcfg).to(DEV)
    load_weights(model, a.init, only=lambda k: not is_mlp(k))
    meta, n = load_upcycled(model, a.upcycled)
    if meta.get("llama.expert_count") != a.experts or meta.get("llama.expert_used_count") != a.top_k:
        raise ValueError("%s has %s experts, %s used; asked for %d, %d" % (
            a.upcycled, meta.get("llama.expert_count"), meta.get("llama.expert_used_count"), a.experts, a.top_k))
    dense.eval(), model.eval()
    x = valid.per_lang["python"][:256].long()[None]
    with torch.no_grad():
        ld, lm = dense(x).float(), model(x).float()
    d = (ld - lm).abs().max().item()
    log("moe: %s (%d tensors): upcycled vs dense max logit difference %.3g (logits up to %.3g)"
        % (a.upcycled, n, d, ld.abs().max().item()))
    if not d <= 1e-3 * ld.abs().max().item():
        raise AssertionError("the upcycled MoE does not compute the dense function")
    del dense
    model.train()
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not is_mlp(k)}
    data = Data(a.data, LANGS, "train", DEV, a.max_train_tokens)
    st = train_phase(model, data, a, "moe", is_mlp, a.steps, 0, a.lr, a.warmup, a.batch,
                     os.path.join(a.out, "ckpt_moe.pt"), a.deadline_t, a.compile)
    round_to_f16(model)
    sd = model.state_dict()
    for k, v in frozen.items():
        if not torch.equal(sd[k], v):
            raise AssertionError("moe changed frozen tensor %s" % k)
    sio.save(path, moe_export(model), {"format": "pt", "phase": "moe", "steps": str(st["steps"]),
                                       "experts": str(a.experts), "top_k": str(a.top_k)})
    st["eval"] = evaluate(model, valid, a.ctx, a.eval_windows)
    st["experts"], st["top_k"] = a.experts, a.top_k
    log("moe: saved %s; valid ppl %s" % (path, fmt_ppl(st["eval"])))
    results_update(a.out, "moe", st)


def hf_check(cfg, folder):
    """Our forward pass against transformers' LlamaForCausalLM reading our exported folder.  Random
    weights large enough for sharp attention, so a rope, GQA or norm mistake shows."""
    try:
        import transformers
        from transformers import LlamaForCausalLM
    except ImportError as e:
        log("smoke: transformers check skipped (%s)" % e)
        return
    torch.manual_seed(5)
    m = CodeLlama(cfg).to(DEV)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            else:
                p.normal_(0, 0.08)
    round_to_f16(m)
    write_hf_config(cfg, folder)
    save_weights(m, os.path.join(folder, "model.safetensors"))
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        try:
            hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
        except TypeError:
            hf = LlamaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32)
        hf = hf.to(DEV).eval()
        x = torch.randint(0, cfg["vocab_size"], (2, 300), device=DEV)
        with torch.no_grad():
            ours = m(x)
            theirs = hf(x).logits.float()
    except Exception as e:  # noqa: BLE001  (an API change is not a wrong model)
        log("smoke: WARNING: transformers check could not run: %s" % repr(e)[:300])
        return
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    d, top = (ours - theirs).abs().max().item(), ours.abs().max().item()
    log("smoke: transformers %s LlamaForCausalLM vs ours on random weights: max logit difference %.3g "
        "(logits up to %.3g)" % (transformers.__version__, d, top))
    if not d <= 1e-3 * top:
        raise AssertionError("our model does not compute what LlamaForCausalLM computes")


def phase_smoke(a, cfg, valid):
    """Everything once on a tiny budget, eager: catches mistakes before a long run."""
    import copy
    out = a.out
    os.makedirs(out, exist_ok=True)
    for f in ("ck.pt", "ck2.pt"):
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    b = copy.copy(a)
    b.batch, b.log_every, b.ckpt_every, b.compile, b.warmup, b.resume = 4, 2, 0, False, 2, False
    torch.manual_seed(a.seed)
    model = CodeLlama(cfg).to(DEV)
    data = Data(a.data, LANGS, "train", DEV, 200000)
    init = copy.deepcopy(model.state_dict())
    train_phase(model, data, b, "smoke", lambda n: True, 6, 0, 1e-3, 2, 4, os.path.join(out, "ck.pt"), 0, False)
    ref = copy.deepcopy(model.state_dict())
    # interrupted after a few steps, then resumed: must give the same weights
    model.load_state_dict(init)
    try:
        train_phase(model, data, b, "smoke", lambda n: True, 6, 0, 1e-3, 2, 4, os.path.join(out, "ck.pt"),
                    time.time() - 1, False)
        raise AssertionError("the deadline did not stop the run")
    except Incomplete as e:
        log("smoke: %s" % e)
    model2 = CodeLlama(cfg).to(DEV)
    b.resume = True
    train_phase(model2, data, b, "smoke", lambda n: True, 6, 0, 1e-3, 2, 4, os.path.join(out, "ck.pt"), 0,
                False)
    diff = max((model2.state_dict()[k] - ref[k]).abs().max().item() for k in ref)
    moved = max((init[k] - ref[k]).abs().max().item() for k in ref)
    log("smoke: resumed run vs uninterrupted: max weight difference %.3g (training moved weights by up to %.3g)"
        % (diff, moved))
    if diff > 0.05 * moved:
        raise AssertionError("resume does not reproduce the uninterrupted run")
    # export as a Hugging Face folder, reload, compare
    round_to_f16(model2)
    folder = os.path.join(out, "hf")
    write_hf_config(cfg, folder)
    save_weights(model2, os.path.join(folder, "model.safetensors"))
    m3 = CodeLlama(cfg).to(DEV)
    load_weights(m3, os.path.join(folder, "model.safetensors"))
    x = valid.per_lang["c"][:256].long()[None]
    with torch.no_grad():
        l2, l3 = model2(x), m3(x)
    log("smoke: reload max logit difference %.3g" % (l2 - l3).abs().max().item())
    assert torch.equal(l2, l3)
    hf_check(cfg, os.path.join(out, "hf_check"))
    # a continuation: only MLP weights move
    before = {k: v.clone() for k, v in model2.state_dict().items()}
    dc = Data(a.data, ("python",), "train", DEV, 100000)
    b.resume = False
    train_phase(model2, dc, b, "smoke_cont", is_mlp, 3, 0, 1e-3, 1, 4, os.path.join(out, "ck2.pt"), 0, False)
    after = model2.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(is_mlp(k) for k in moved), moved
    save_weights(model2, os.path.join(out, "mlp.safetensors"), only=is_mlp)
    ev = evaluate(model2, valid, a.ctx, 4)
    log("smoke: %d MLP tensors moved, nothing else; eval %s" % (len(moved), fmt_ppl(ev)))
    g = torch.Generator(device=DEV)
    g.manual_seed(7)
    w = data.batch(g, 64, 128)[0]
    out, mode, fa, fb, fe = fim_permute(w, g, 0.5)
    fim_check(w, out, mode, fa, fb, fe)
    log("smoke: fill-in-the-middle rows: %d plain, %d PSM, %d SPM, each holding its window's tokens"
        % tuple(int((mode == i).sum()) for i in range(3)))
    # identical experts with renormalised top-k weights compute the dense feed-forward
    mc = dict(cfg, num_local_experts=4, num_experts_per_tok=2)
    moe, mlp = SparseMoE(mc).to(DEV), model2.model.layers[0].mlp
    with torch.no_grad():
        moe.gate.weight.normal_(0, 0.02)
        for w_, src in (("w1", mlp.gate_proj), ("w3", mlp.up_proj), ("w2", mlp.down_proj)):
            getattr(moe, w_).copy_(src.weight[None].expand_as(getattr(moe, w_)))
        xx = torch.randn(3, 5, cfg["hidden_size"], device=DEV)
        d = (moe(xx)[0] - mlp(xx)).abs().max().item()
    log("smoke: MoE of identical experts vs the dense MLP: max difference %.3g" % d)
    assert d < 1e-4
    log("smoke: OK")


def main():
    global LOG
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("smoke", "base", "cont", "moe"))
    p.add_argument("--data", required=True, help="folder of <lang>.<split>.u16.xz")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=os.path.join(HERE, "model_config.json"))
    p.add_argument("--init", help="cont, moe: the base weights (safetensors)")
    p.add_argument("--upcycled", help="moe: `codemoe upcycle`'s GGUF of the base (F32/F16)")
    p.add_argument("--experts", type=int, default=8, help="moe: experts per layer")
    p.add_argument("--top-k", type=int, default=2, help="moe: experts per token")
    p.add_argument("--aux-coef", type=float, default=0.01, help="moe: load-balancing loss weight")
    p.add_argument("--fim-rate", type=float, default=0.5,
                   help="share of training rows rearranged for fill-in-the-middle (0: none)")
    p.add_argument("--names", default="baseline," + ",".join(LANGS), help="cont: continuations to train")
    p.add_argument("--steps", type=int, help="steps (base default 20000, capped by --seconds; cont 400)")
    p.add_argument("--seconds", type=float, default=0, help="base: fit the schedule into this many seconds")
    p.add_argument("--batch", type=int, help="sequences per step (base 128, cont 64)")
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--lr", type=float, help="peak learning rate (base 2e-3, cont 6e-4)")
    p.add_argument("--warmup", type=int, help="warmup steps (base 200, cont 40)")
    p.add_argument("--min-lr", type=float, default=0.1, help="final lr as a fraction of the peak")
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--max-train-tokens", type=int, default=0, help="per language (0: all)")
    p.add_argument("--eval-windows", type=int, default=128, help="validation windows per language")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--deadline", type=float, default=0, help="seconds after start: checkpoint and exit 3")
    p.add_argument("--deadline-at", type=float, default=0, help="the same, as a Unix time")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--force", action="store_true", help="redo outputs that exist")
    p.add_argument("--no-compile", dest="compile", action="store_false")
    a = p.parse_args()
    base_defaults = {"steps": 20000, "batch": 128, "lr": 2e-3, "warmup": 200}
    cont_defaults = {"steps": 400, "batch": 64, "lr": 6e-4, "warmup": 40}
    for k, v in (cont_defaults if a.phase in ("cont", "moe") else base_defaults).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.phase in ("cont", "moe") and not a.init:
        p.error("%s needs --init" % a.phase)
    if a.phase == "moe" and not a.upcycled:
        p.error("moe needs --upcycled")
    a.deadline_t = a.deadline_at or (T0 + a.deadline if a.deadline else 0)
    os.makedirs(a.out, exist_ok=True)
    LOG = os.path.join(a.out, "train.log")
    with open(a.config) as f:
        cfg = json.load(f)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    log("train.py %s: torch %s, %s, args %s" % (a.phase, torch.__version__, torch.cuda.get_device_name(0) if DEV == "cuda" else "CPU",
                                                {k: v for k, v in vars(a).items() if k != "deadline_t"}))
    valid = Data(a.data, LANGS, "valid", DEV)
    t = time.time()
    try:
        {"smoke": phase_smoke, "base": phase_base, "cont": phase_cont, "moe": phase_moe}[a.phase](a, cfg, valid)
    except Incomplete as e:
        log(str(e))
        sys.exit(3)
    log("%s done in %.1f s (GPU wall time of this process: %.1f s)" % (a.phase, time.time() - t, time.time() - T0))


if __name__ == "__main__":
    main()
