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
T0 = time.time()
LOG = None


def log(*a):
    s = "[%7.1fs] " % (time.time() - T0) + " ".join(str(x) for x in a)
    print(s, flush=True)
    if LOG:
        with open(LOG, "a") as f:
            f.write(s + "\n")


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
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
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


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c["hidden_size"], c["rms_norm_eps"])
        self.mlp = MLP(c)


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
            s = std / math.sqrt(2 * L) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            nn.init.normal_(p, 0.0, s)

    def forward(self, idx, targets=None):
        m = self.model
        h = m.embed_tokens(idx)
        for layer in m.layers:
            h = h + layer.self_attn(layer.input_layernorm(h), self.cos, self.sin)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        logits = F.linear(m.norm(h), m.embed_tokens.weight)
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))


def is_mlp(name):
    return ".mlp." in name


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

    def batch(self, g, B, T):
        li = torch.randint(0, len(self.langs), (B,), generator=g, device=self.device)
        span = (self.lens[li] - T - 1).clamp(min=1)
        off = self.starts[li] + (torch.rand(B, generator=g, device=self.device) * span).long()
        w = self.tok[off[:, None] + torch.arange(T + 1, device=self.device)].long()
        return w[:, :-1], w[:, 1:]


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
            with torch.autocast("cuda", dtype=torch.bfloat16):
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
    opt = torch.optim.AdamW(groups, lr=peak, betas=(0.9, 0.95), eps=1e-8, fused=True)
    total, step0 = steps, 0
    if a.resume and os.path.exists(ckpt):
        st = torch.load(ckpt, map_location="cuda", weights_only=False)
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
    g = torch.Generator(device="cuda")
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
        x, y = data.batch(g, batch, a.ctx)
        if step == step0 and fwd is not model:
            try:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = fwd(x, y)
                loss.backward()
            except Exception as e:  # noqa: BLE001
                log("torch.compile failed (%s); eager" % (str(e).splitlines() or [""])[0][:200])
                fwd = model
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    loss = fwd(x, y)
                loss.backward()
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fwd(x, y)
            loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.detach())
        if step - step0 == 10:
            torch.cuda.synchronize()
            t_meas, s_meas = time.time(), step
        if seconds and t_meas and step - step0 == 40:
            torch.cuda.synchronize()
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
    torch.cuda.synchronize()
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
    model = CodeLlama(cfg).cuda()
    data = Data(a.data, LANGS, "train", "cuda", a.max_train_tokens)
    st = train_phase(model, data, a, "base", lambda n: True, a.steps, a.seconds, a.lr, a.warmup, a.batch,
                     os.path.join(a.out, "ckpt_base.pt"), a.deadline_t, a.compile)
    round_to_f16(model)
    n = save_weights(model, path, meta={"phase": "base", "steps": st["steps"]})
    st["eval"] = evaluate(model, valid, a.ctx, a.eval_windows)
    st["params"] = n
    log("base: saved %s (%d parameters); valid ppl %s" % (path, n, fmt_ppl(st["eval"])))
    results_update(a.out, "base", st)


def phase_cont(a, cfg, valid):
    model = CodeLlama(cfg).cuda()
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
        data = Data(a.data, langs, "train", "cuda", a.max_train_tokens)
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
        torch.cuda.empty_cache()


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
    m = CodeLlama(cfg).cuda()
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
        hf = hf.cuda().eval()
        x = torch.randint(0, cfg["vocab_size"], (2, 300), device="cuda")
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
    model = CodeLlama(cfg).cuda()
    data = Data(a.data, LANGS, "train", "cuda", 200000)
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
    model2 = CodeLlama(cfg).cuda()
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
    m3 = CodeLlama(cfg).cuda()
    load_weights(m3, os.path.join(folder, "model.safetensors"))
    x = valid.per_lang["c"][:256].long()[None]
    with torch.no_grad():
        l2, l3 = model2(x), m3(x)
    log("smoke: reload max logit difference %.3g" % (l2 - l3).abs().max().item())
    assert torch.equal(l2, l3)
    hf_check(cfg, os.path.join(out, "hf_check"))
    # a continuation: only MLP weights move
    before = {k: v.clone() for k, v in model2.state_dict().items()}
    dc = Data(a.data, ("python",), "train", "cuda", 100000)
    b.resume = False
    train_phase(model2, dc, b, "smoke_cont", is_mlp, 3, 0, 1e-3, 1, 4, os.path.join(out, "ck2.pt"), 0, False)
    after = model2.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(is_mlp(k) for k in moved), moved
    save_weights(model2, os.path.join(out, "mlp.safetensors"), only=is_mlp)
    ev = evaluate(model2, valid, a.ctx, 4)
    log("smoke: %d MLP tensors moved, nothing else; eval %s" % (len(moved), fmt_ppl(ev)))
    log("smoke: OK")


def main():
    global LOG
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("smoke", "base", "cont"))
    p.add_argument("--data", required=True, help="folder of <lang>.<split>.u16.xz")
    p.add_argument("--out", required=True)
    p.add_argument("--config", default=os.path.join(HERE, "model_config.json"))
    p.add_argument("--init", help="cont: the base weights (safetensors)")
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
    for k, v in (cont_defaults if a.phase == "cont" else base_defaults).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.phase == "cont" and not a.init:
        p.error("cont needs --init")
    a.deadline_t = a.deadline_at or (T0 + a.deadline if a.deadline else 0)
    os.makedirs(a.out, exist_ok=True)
    LOG = os.path.join(a.out, "train.log")
    with open(a.config) as f:
        cfg = json.load(f)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    log("train.py %s: torch %s, %s, args %s" % (a.phase, torch.__version__, torch.cuda.get_device_name(0),
                                                {k: v for k, v in vars(a).items() if k != "deadline_t"}))
    valid = Data(a.data, LANGS, "valid", "cuda")
    t = time.time()
    try:
        {"smoke": phase_smoke, "base": phase_base, "cont": phase_cont}[a.phase](a, cfg, valid)
    except Incomplete as e:
        log(str(e))
        sys.exit(3)
    log("%s done in %.1f s (GPU wall time of this process: %.1f s)" % (a.phase, time.time() - t, time.time() - T0))


if __name__ == "__main__":
    main()
