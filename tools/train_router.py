#!/usr/bin/env python3
"""train_router.py - trains the language router's classifier (models/router.bin).

    python3 tools/train_router.py [--corpus ../shared/corpus] [-o models/router.bin]

Reads <corpus>/<lang>/train.jsonl.xz for the seven corpus languages, holds
out a tenth of the train files (by content hash) to report accuracy on, and
never reads the valid splits.  Standard library only; deterministic (fixed
seeds, one fixed order of floating-point operations), so the same corpus
gives the same file byte for byte.  About ten minutes on two cores.

The model: multiclass logistic regression over hashed features (character
1-4-grams, tokens, line-initial tokens, token pairs; exactly as described in
src/router.h, which also documents the file format), with the feature vector
scaled by 1/sqrt(number of features) so that a 3-line snippet and a whole
file live on one scale.  It starts from naive Bayes (log-count ratios
counted over every fitting file: cheap, and already good on long texts) and
is refined by a few epochs of SGD on random snippets of 1-40 lines, file
prefixes and whole files, which is what fixes short prompts and languages
whose n-grams are spread thin (JavaScript draws on 80 packages).
"""
import argparse
import array
import json
import lzma
import math
import multiprocessing
import operator
import os
import random
import re
import struct
import sys
import time
from collections import Counter

LANGS = ['c', 'cpp', 'python', 'java', 'javascript', 'go', 'rust']
HASH_BITS = 17           # 2^17 buckets x 7 languages x int16 = 1.8 MB
MASK = (1 << HASH_BITS) - 1
M32 = 0xFFFFFFFF
FNV_OFFSET, FNV_PRIME = 0x811C9DC5, 0x01000193
SALT_UNI, SALT_BOL, SALT_PAIR, PAIR_MUL = 0x5bd1e995, 0x27d4eb2f, 0x165667b1, 0x9E3779B1

# Training recipe (chosen on the held-out tenth of train, see tune_report).
NB_ALPHA = 0.3           # additive smoothing of the naive Bayes counts
NB_TAU = 0.2             # naive Bayes log-ratios -> initial weights
SNIPPETS_PER_LANG = 10000
PREFIXES_PER_LANG = 1000
EPOCHS = 6
LEARNING_RATE = 0.1
MIN_GRAD = 0.01          # skip a language's update when |p - y| is smaller
EASY_LOSS = 0.02         # an example this well learnt is revisited ...
REVISIT_EASY = 0.25      # ... with this probability
SHARDS = 2               # SGD shards averaged after each epoch
SEED = 20240601


# ---------------------------------------------------------------- features

def fmix32(h):
    """MurmurHash3's 32-bit finalizer."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    return h ^ (h >> 16)


def _norm_table():
    t = bytearray(range(256))
    for i in range(256):
        if i >= 0x80:
            t[i] = 0x80
        elif 0x31 <= i <= 0x39:
            t[i] = 0x30
        elif (i < 0x20 and i not in (9, 10)) or i == 0x7F:
            t[i] = 0x20
    return bytes(t)


NORM = _norm_table()
TOKEN_RE = re.compile(rb'\n|[A-Za-z_]\w*|0[\w.]*|[^ \t\n]')


def normalize(raw):
    return raw.replace(b'\r', b'').translate(NORM)


def fnv1a(data):
    h = FNV_OFFSET
    for c in data:
        h = ((h ^ c) * FNV_PRIME) & M32
    return h


class Featurizer:
    """Maps normalized text to {bucket: count}; caches hashes (the slow part
    in Python) per distinct n-gram, token and token pair."""

    def __init__(self):
        self.gram = {}
        self.tok = {}
        self.pair = {}

    def gram_bucket(self, key):
        b = self.gram.get(key)
        if b is None:
            b = self.gram[key] = fmix32(key) & MASK
        return b

    def token(self, t):
        r = self.tok.get(t)
        if r is None:
            h = fnv1a(b'0' if t[0] == 0x30 else t)
            r = self.tok[t] = (h, fmix32(h ^ SALT_UNI) & MASK, fmix32(h ^ SALT_BOL) & MASK)
        return r

    def pair_bucket(self, prev, h):
        k = (prev, h)
        b = self.pair.get(k)
        if b is None:
            b = self.pair[k] = fmix32(((prev * PAIR_MUL + h) & M32) ^ SALT_PAIR) & MASK
        return b

    def grams(self, nb, out):
        # The key after byte j is bytes j-3..j little-endian (newest on top),
        # zeros before the text: exactly the 4-byte windows of the padded text.
        p = b'\0\0\0' + nb
        windows = Counter()
        for k in range(4):
            m = (len(p) - k) // 4
            if m > 0:
                windows.update(memoryview(p[k:k + 4 * m]).cast('I'))
        gb = self.gram_bucket
        for v, c in windows.items():
            out[gb(v)] += c
            out[gb(v >> 8)] += c
            out[gb(v >> 16)] += c
            out[gb(v >> 24)] += c

    def tokens(self, nb, out):
        bol, prev = True, None
        for t in TOKEN_RE.findall(nb):
            if t == b'\n':
                bol = True
                continue
            h, uni, line = self.token(t)
            out[uni] += 1
            if bol:
                out[line] += 1
                bol = False
            if prev is not None:
                out[self.pair_bucket(prev, h)] += 1
            prev = h

    def __call__(self, raw):
        nb = normalize(raw)
        out = Counter()
        self.grams(nb, out)
        self.tokens(nb, out)
        return out


def as_example(lang, feats):
    """(language, buckets, values scaled by 1/sqrt(feature count))."""
    n = sum(feats.values())
    s = 1.0 / math.sqrt(n) if n else 0.0
    return (lang, array.array('i', feats.keys()), array.array('d', [v * s for v in feats.values()]))


# ---------------------------------------------------------------- data

def is_tune(sha1):
    """A tenth of train, disjoint from the corpus split's own hash use."""
    return int(sha1[8:16], 16) % 10 == 0


def load_split(corpus, lang, tune):
    with lzma.open(os.path.join(corpus, lang, 'train.jsonl.xz'), 'rt', encoding='utf-8') as f:
        docs = [json.loads(line) for line in f]
    docs.sort(key=lambda d: d['sha1'])
    return [d['content'].encode('utf-8') for d in docs if is_tune(d['sha1']) == tune]


def lines_of(doc, rng, lo, hi):
    lines = doc.split(b'\n')
    n = rng.randint(lo, hi)
    s = rng.randrange(max(1, len(lines) - n + 1))
    return b'\n'.join(lines[s:s + n])


def snippet_texts(docs, rng, n_lines, count):
    """count snippets of exactly n_lines lines that are not all blank."""
    out = []
    pool = [d for d in docs if d.count(b'\n') + 1 >= n_lines]
    while pool and len(out) < count:
        sn = lines_of(rng.choice(pool), rng, n_lines, n_lines)
        if sn.strip():
            out.append(sn)
    return out


# ---------------------------------------------------------------- stages

def count_language(job):
    """Naive Bayes counts of one language's fitting files, plus its SGD
    examples: every whole file, random snippets and file prefixes."""
    corpus, li = job
    docs = load_split(corpus, LANGS[li], tune=False)
    fz = Featurizer()
    counts = [0] * (MASK + 1)
    examples = []
    for d in docs:
        f = fz(d)
        for b, c in f.items():
            counts[b] += c
        examples.append(as_example(li, f))
    rng = random.Random(SEED + li)
    texts = []
    while len(texts) < SNIPPETS_PER_LANG:
        sn = lines_of(rng.choice(docs), rng, 1, 40)
        if sn.strip():
            texts.append(sn)
    for _ in range(PREFIXES_PER_LANG):
        doc = rng.choice(docs)
        texts.append(b'\n'.join(doc.split(b'\n')[:rng.randint(20, 300)]))
    examples += [as_example(li, fz(t)) for t in texts]
    return counts, examples


def tune_language(job):
    """Held-out examples: whole files and 3/10/30-line snippets."""
    corpus, li = job
    docs = load_split(corpus, LANGS[li], tune=True)
    rng = random.Random(SEED + 100 + li)
    fz = Featurizer()
    sets = {'file': docs[:100]}
    for n in (3, 10, 30):
        sets[n] = snippet_texts(docs, rng, n, 300)
    return {k: [as_example(li, fz(t)) for t in v] for k, v in sets.items()}


def naive_bayes(counts):
    """Per bucket, tau * log p(bucket | lang) centred over languages (a shift
    common to all languages changes no probability)."""
    nl = len(counts)
    logs = []
    for c in counts:
        denom = sum(c) + NB_ALPHA * len(c)
        logs.append([math.log((x + NB_ALPHA) / denom) for x in c])
    w = [[0.0] * (MASK + 1) for _ in range(nl)]
    for b in range(MASK + 1):
        col = [logs[l][b] for l in range(nl)]
        m = sum(col) / nl
        for l in range(nl):
            w[l][b] = NB_TAU * (col[l] - m)
    return w


def logits(w, bias, ks, vs):
    mul = operator.mul
    return [bias[l] + sum(map(mul, map(w[l].__getitem__, ks), vs)) for l in range(len(w))]


def softmax(z):
    m = max(z)
    e = [math.exp(x - m) for x in z]
    s = sum(e)
    return [x / s for x in e]


# The examples, set before the SGD pool forks so workers share them.
EXAMPLES = []


def sgd_shard(job):
    """One epoch of plain SGD on the softmax cross-entropy over one shard,
    from the given weights.  Examples learnt well (loss under EASY_LOSS last
    time) are revisited only with probability REVISIT_EASY: the hard ones
    are where the weights still move.  Returns the new weights, the new
    losses of the examples visited and the summed loss."""
    shard, ep, w, bias, losses = job
    rng = random.Random(SEED + 1000 * ep + shard)
    idx = list(range(shard, len(EXAMPLES), SHARDS))
    rng.shuffle(idx)
    lr, total, seen = LEARNING_RATE / (1 + ep), 0.0, {}
    for i in idx:
        if ep and losses.get(i, 1.0) < EASY_LOSS and rng.random() >= REVISIT_EASY:
            continue
        y, ks, vs = EXAMPLES[i]
        p = softmax(logits(w, bias, ks, vs))
        seen[i] = -math.log(max(p[y], 1e-300))
        total += seen[i]
        for l, pl in enumerate(p):
            g = pl - (l == y)
            if -MIN_GRAD < g < MIN_GRAD:
                continue
            step, wl = -lr * g, w[l]
            bias[l] += 0.01 * step
            for k, v in zip(ks, vs):
                wl[k] += step * v
    return w, bias, seen, total


def sgd(w, bias, pool, log):
    """Iterative parameter mixing: each epoch, SHARDS workers run SGD on
    their shard from the same weights and the results are averaged (in a
    fixed order, so the outcome does not depend on the number of jobs)."""
    losses = [{} for _ in range(SHARDS)]
    for ep in range(EPOCHS):
        t0 = time.time()
        jobs = [(s, ep, w, bias, losses[s]) for s in range(SHARDS)]
        out = pool.map(sgd_shard, jobs)
        w = [[sum(col) / SHARDS for col in zip(*rows)] for rows in zip(*(o[0] for o in out))]
        bias = [sum(col) / SHARDS for col in zip(*(o[1] for o in out))]
        n = 0
        for s, o in enumerate(out):
            losses[s].update(o[2])
            n += len(o[2])
        loss = sum(o[3] for o in out) / max(1, n)
        log(f'epoch {ep + 1}/{EPOCHS}: {n} examples visited, mean loss {loss:.4f} '
            f'({time.time() - t0:.0f} s)')
    return w, bias


# ---------------------------------------------------------------- output

def quantize(w):
    """int16 weights and the scale that turns them back into floats."""
    top = max(max(abs(x) for x in row) for row in w) or 1.0
    scale = top / 32767.0
    q = [[int(round(x / scale)) for x in row] for row in w]
    return q, scale


def encode(q, scale, bias):
    nl = len(q)
    out = bytearray(b'CMROUTER')
    out += struct.pack('<IIIIfI', 1, nl, HASH_BITS, 1, scale, 0)
    for name in LANGS:
        out += name.encode().ljust(16, b'\0')
    out += struct.pack(f'<{nl}f', *bias)
    rows = array.array('h', [0] * ((MASK + 1) * nl))
    for l in range(nl):
        rows[l::nl] = array.array('h', q[l])
    if sys.byteorder != 'little':
        rows.byteswap()
    out += rows.tobytes()
    out += struct.pack('<I', fnv1a(bytes(out)))
    return bytes(out)


def tune_report(q, scale, bias, tune, log):
    """Accuracy of the quantized model (what the C code computes) on the
    held-out tenth of train, per language and prompt kind."""
    w = [[x * scale for x in row] for row in q]
    b32 = [struct.unpack('<f', struct.pack('<f', x))[0] for x in bias]
    log('held-out accuracy (%): ' + ' '.join(f'{l:>10}' for l in LANGS))
    for kind in ('file', 3, 10, 30):
        accs = []
        for li in range(len(LANGS)):
            exs = tune[li][kind]
            ok = sum(1 for y, ks, vs in exs
                     if max(enumerate(logits(w, b32, ks, vs)), key=lambda t: t[1])[0] == y)
            accs.append(100.0 * ok / max(1, len(exs)))
        name = 'whole files' if kind == 'file' else f'{kind}-line snippets'
        log(f'{name:>22}: ' + ' '.join(f'{a:10.1f}' for a in accs))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--corpus', default=os.path.join(here, '..', '..', 'shared', 'corpus'))
    ap.add_argument('-o', '--output', default=os.path.join(here, '..', 'models', 'router.bin'))
    ap.add_argument('-j', '--jobs', type=int, default=2)
    args = ap.parse_args()
    t0 = time.time()

    def log(msg):
        print(f'[{time.time() - t0:6.0f}s] {msg}', flush=True)

    jobs = [(args.corpus, li) for li in range(len(LANGS))]
    with multiprocessing.Pool(args.jobs) as pool:
        parts = pool.map(count_language, jobs)
        tune = pool.map(tune_language, jobs)
    counts = [p[0] for p in parts]
    EXAMPLES.extend(e for p in parts for e in p[1])
    parts = None
    log(f'counted features; {len(EXAMPLES)} training examples')
    w = naive_bayes(counts)
    bias = [0.0] * len(LANGS)
    with multiprocessing.Pool(min(args.jobs, SHARDS)) as pool:
        w, bias = sgd(w, bias, pool, log)
    q, scale = quantize(w)
    tune_report(q, scale, bias, tune, log)
    data = encode(q, scale, bias)
    tmp = args.output + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, args.output)
    log(f'wrote {args.output} ({len(data)} bytes)')


if __name__ == '__main__':
    main()
