#!/usr/bin/env python3
"""fim_eval.py - fill-in-the-middle exact match of a model, through `codemoe run --infill`.

    python3 train/fim_eval.py --codemoe ./codemoe -m MODEL.gguf --corpus ../shared/corpus \
        [--langs c,cpp,...] [-n 50] [--jobs 8] [--json OUT.json]

For each language, the first -n files of the corpus valid split (held out
from training) that have at least 8 lines: one line is masked (chosen with a
fixed seed among the lines with at least 8 non-blank characters, not in the
first or last 3), the model gets up to 40 lines before it as the prefix and up
to 20 lines after it as the suffix, and generates (greedy, at most 64 tokens).
A sample is an exact match when the generated text's first line equals the
masked line (trailing whitespace ignored); its edit similarity is difflib's
ratio of the two lines (1.0 the same), as code-completion benchmarks report
it, which tells apart models that match no line exactly.  `run --infill`
heals the prefix's last token unless --no-heal is given (passed on).  Prints
one line per language and writes the counts and a few samples as JSON.
"""
import argparse
import concurrent.futures as cf
import difflib
import json
import lzma
import os
import random
import subprocess
import sys
import tempfile

LANGS = ("c", "cpp", "go", "java", "javascript", "python", "rust")
# whole lines, at most this many characters: with the 64 generated tokens the
# prompt stays inside the model's 512 trained positions (a 1,500 + 600 character
# cap made 1,228 tokens of one C file: under 2 characters a token)
MAX_PREFIX, MAX_SUFFIX = 700, 300


def samples(corpus, lang, n, seed):
    out = []
    with lzma.open(os.path.join(corpus, lang, "valid.jsonl.xz"), "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["content"]
            lines = text.split("\n")
            cand = [i for i in range(3, len(lines) - 3) if len(lines[i].strip()) >= 8]
            if len(lines) < 8 or not cand:
                continue
            i = random.Random("%s:%d:%s" % (lang, seed, len(out))).choice(cand)
            before, after = lines[max(0, i - 40):i], lines[i + 1:i + 21]
            while len(before) > 1 and sum(len(x) + 1 for x in before) > MAX_PREFIX:
                before = before[1:]
            while len(after) > 1 and sum(len(x) + 1 for x in after) > MAX_SUFFIX:
                after = after[:-1]
            prefix, suffix = "\n".join(before) + "\n", "\n".join(after)
            out.append({"lang": lang, "line": lines[i], "prefix": prefix, "suffix": suffix})
            if len(out) == n:
                break
    return out


def run_one(a, s, tmp):
    fd, pf = tempfile.mkstemp(dir=tmp)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(s["prefix"])
    fd, sf = tempfile.mkstemp(dir=tmp)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(s["suffix"])
    cmd = [a.codemoe, "run", "-m", a.model, "--infill", "--prefix-file", pf, "--suffix-file", sf,
           "-n", "64", "--temp", "0", "-t", "1"] + (["--no-heal"] if a.no_heal else [])
    r = subprocess.run(cmd, capture_output=True, timeout=300)
    os.unlink(pf), os.unlink(sf)
    if r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), r.stderr.decode(errors="replace").strip()[-300:]))
    got = r.stdout.decode("utf-8", errors="replace")
    first = got.split("\n", 1)[0]
    sim = difflib.SequenceMatcher(None, first.rstrip(), s["line"].rstrip()).ratio()
    return dict(s, generated=got, exact=first.rstrip() == s["line"].rstrip(), similarity=sim)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codemoe", default="./codemoe")
    p.add_argument("-m", "--model", required=True)
    p.add_argument("--corpus", required=True)
    p.add_argument("--langs", default=",".join(LANGS))
    p.add_argument("-n", type=int, default=50, help="files per language")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--no-heal", action="store_true", help="run --infill --no-heal")
    a = p.parse_args()
    work = [s for lang in a.langs.split(",") for s in samples(a.corpus, lang, a.n, a.seed)]
    with tempfile.TemporaryDirectory() as tmp, cf.ThreadPoolExecutor(a.jobs) as ex:
        res = list(ex.map(lambda s: run_one(a, s, tmp), work))
    summary = {}
    for lang in a.langs.split(","):
        r = [x for x in res if x["lang"] == lang]
        summary[lang] = {"files": len(r), "exact": sum(x["exact"] for x in r),
                         "similarity": sum(x["similarity"] for x in r) / max(1, len(r))}
        print("%-10s %3d/%3d exact (%.1f %%), edit similarity %.3f" % (
            lang, summary[lang]["exact"], len(r), 100.0 * summary[lang]["exact"] / max(1, len(r)),
            summary[lang]["similarity"]))
    tot = sum(v["exact"] for v in summary.values()), sum(v["files"] for v in summary.values())
    sim = sum(x["similarity"] for x in res) / max(1, len(res))
    print("%-10s %3d/%3d exact (%.1f %%), edit similarity %.3f" % ("all", tot[0], tot[1],
                                                                100.0 * tot[0] / max(1, tot[1]), sim))
    if a.json:
        shown = [{k: x[k] for k in ("lang", "line", "generated", "exact", "similarity")}
                 for x in res[::max(1, len(res) // 14)]]
        with open(a.json + ".tmp", "w") as f:
            json.dump({"model": a.model, "n": a.n, "seed": a.seed, "heal": not a.no_heal,
                       "summary": summary, "all": list(tot), "similarity": sim,
                       "samples": shown}, f, indent=1)
        os.replace(a.json + ".tmp", a.json)


if __name__ == "__main__":
    sys.exit(main())
