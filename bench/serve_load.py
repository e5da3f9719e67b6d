#!/usr/bin/env python3
"""serve_load.py - load test of `codemoe serve` (python3 standard library only).

Starts a server, sends it requests from concurrent clients, stops it, and
prints one JSON line of results; stops by itself (a fixed number of
requests, a time limit on each).

  load:   --clients C clients, each sending --requests R completions
          (prompts cut from a code file, max_tokens T, temperature 0,
          streamed: the first token's latency is measured too)
  infill: --infill: the same ~2,000-token /infill prefix twice, the second
          time with one line changed (an editor resending a file)
  all:    --all: the load at --parallel P, the same load at --parallel 1,
          then the infill timing; a markdown table at the end (bench/SERVER.md).
          --rounds N: the two loads N times, interleaved (P, 1, P, 1, ...: a
          shared machine's load drifts), each round's ratio and the medians

  python3 bench/serve_load.py --codemoe ./codemoe --model models/default.gguf \\
      --parallel 16 --clients 16 --requests 4 --text corpus/python/sample.txt
"""
import argparse
import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time


def start_server(a, parallel, ctx):
    cmd = [a.codemoe, "serve", "--port", "0", "-m", a.model, "-t", str(a.threads),
           "-c", str(ctx), "--parallel", str(parallel)]
    log = open(a.log, "a") if a.log else subprocess.DEVNULL
    p = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        if log is not subprocess.DEVNULL:
            log.write(line)
        m = re.search(r"listening on http://([^:]+):(\d+)", line)
        if m:
            threading.Thread(target=drain, args=(p, log), daemon=True).start()
            return p, m.group(1), int(m.group(2))
    p.kill()
    sys.exit("the server did not start: " + " ".join(cmd))


def drain(p, log):
    for line in p.stderr:
        if log is not subprocess.DEVNULL:
            log.write(line)


def post(host, port, path, body, stream, timeout):
    """(status, text, seconds, seconds to the first token, tokens)"""
    t0 = time.time()
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    first, text, tokens = None, [], 0
    if r.status != 200:
        return r.status, r.read().decode("utf-8", "replace"), time.time() - t0, None, 0
    if not stream:
        d = json.loads(r.read())
        return 200, d, time.time() - t0, None, 0
    for raw in r:
        line = raw.decode("utf-8").rstrip("\n")
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        d = json.loads(line[6:])
        if "error" in d:
            return 500, d, time.time() - t0, first, tokens
        if d.get("usage"):
            tokens = d["usage"]["completion_tokens"]
        piece = d["choices"][0]["text"] if d.get("choices") else ""
        if piece and first is None:
            first = time.time() - t0
        text.append(piece)
    c.close()
    return 200, "".join(text), time.time() - t0, first, tokens


def server_cpu(pid):
    """CPU seconds (user + system) the server has used, from /proc; -1 elsewhere.
    On a shared machine this, per token, is steadier than the wall clock."""
    try:
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return -1


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else None


def load(a, prompts):
    p, host, port = start_server(a, a.parallel, a.ctx)
    lat, ttft, toks, errors = [], [], [0], []
    lock = threading.Lock()

    def client(k):
        for i in range(a.requests):
            body = {"prompt": prompts[(k * a.requests + i) % len(prompts)],
                    "max_tokens": a.max_tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}, "cache_prompt": False}
            try:
                st, out, secs, first, n = post(host, port, "/v1/completions", body, True, 300)
            except Exception as e:  # a refused or dropped connection is an error
                st, out, secs, first, n = 0, str(e), 0, None, 0
            with lock:
                if st != 200:
                    errors.append("%s %s" % (st, str(out)[:200]))
                    continue
                lat.append(secs)
                toks[0] += n
                if first is not None:
                    ttft.append(first)

    # one request first, untimed: the model's pages in, the threads started
    post(host, port, "/v1/completions", {"prompt": prompts[0], "max_tokens": 8}, False, 300)
    t0, cpu0 = time.time(), server_cpu(p.pid)
    th = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    wall = time.time() - t0
    cpu = server_cpu(p.pid) - cpu0
    p.terminate()
    p.wait(30)
    return {"parallel": a.parallel, "clients": a.clients, "requests": a.clients * a.requests,
            "errors": len(errors), "first_errors": errors[:3], "tokens": toks[0],
            "seconds": round(wall, 3), "tokens_per_s": round(toks[0] / wall, 1),
            "latency_p50_s": round(pct(lat, 50), 3), "latency_p99_s": round(pct(lat, 99), 3),
            "first_token_p50_s": round(pct(ttft, 50), 3) if ttft else None,
            "first_token_p99_s": round(pct(ttft, 99), 3) if ttft else None,
            "server_cpu_s": round(cpu, 2) if cpu >= 0 else None,
            "server_cpu_ms_per_token": round(1000 * cpu / toks[0], 3) if cpu >= 0 and toks[0] else None}


def infill(a, text):
    p, host, port = start_server(a, 1, 3072)
    pre = text[:7600]
    pre = pre[:pre.rindex("\n") + 1]
    cut = pre.rindex("\n", 0, len(pre) - 1) + 1
    pre2 = pre[:cut] + "    x = 42  # changed\n"
    res = []
    for name, pfx in (("first", pre), ("second", pre2)):
        body = {"input_prefix": pfx, "input_suffix": "\n", "n_predict": 16, "temperature": 0,
                "cache_prompt": True, "input_extra": [{"filename": a.filename, "text": ""}]}
        st, d, secs, _, _ = post(host, port, "/infill", body, False, 300)
        if st != 200:
            sys.exit("/infill answered %s: %s" % (st, d))
        res.append({"request": name, "seconds": round(secs, 3),
                    "tokens_evaluated": d["tokens_evaluated"], "tokens_cached": d["tokens_cached"]})
    p.terminate()
    p.wait(30)
    return {"infill": res, "speedup": round(res[0]["seconds"] / res[1]["seconds"], 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--codemoe", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--text", required=True, help="a code file: prompts are cut from it")
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4, help="per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx", type=int, default=512, help="per slot")
    ap.add_argument("--infill", action="store_true", help="the prefix-reuse timing instead")
    ap.add_argument("--all", action="store_true", help="load at P and at 1, then infill")
    ap.add_argument("--filename", default="sample.py", help="input_extra file name (infill)")
    ap.add_argument("--log", help="append the server's log here")
    ap.add_argument("--rounds", type=int, default=1, help="--all: interleaved rounds")
    a = ap.parse_args()
    text = open(a.text, encoding="utf-8").read()
    if a.infill:
        print(json.dumps(infill(a, text)))
        return
    lines = text.splitlines(keepends=True)
    prompts = ["".join(lines[i:i + 6]) for i in range(0, len(lines) - 6, 7)]
    prompts = [q for q in prompts if 40 < len(q) < 600] or [text[:300]]
    if not a.all:
        print(json.dumps(load(a, prompts)))
        return
    rows, many = [], a.parallel
    for rnd in range(a.rounds):
        for par in (many, 1):
            a.parallel = par
            rows.append(dict(load(a, prompts), round=rnd + 1))
            print(json.dumps(rows[-1]), flush=True)
    inf = infill(a, text)
    print(json.dumps(inf), flush=True)
    print("\n| round | server | requests | errors | tokens | seconds | tok/s | p50 s | p99 s | first token p50 s | p99 s | server CPU ms/token |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| %d | --parallel %d | %d | %d | %d | %.1f | %.1f | %.2f | %.2f | %.2f | %.2f | %s |" % (
            r["round"], r["parallel"], r["requests"], r["errors"], r["tokens"], r["seconds"],
            r["tokens_per_s"], r["latency_p50_s"], r["latency_p99_s"],
            r["first_token_p50_s"] or 0, r["first_token_p99_s"] or 0,
            "%.3f" % r["server_cpu_ms_per_token"] if r["server_cpu_ms_per_token"] else "-"))
    hi = [r["tokens_per_s"] for r in rows if r["parallel"] == many]
    lo = [r["tokens_per_s"] for r in rows if r["parallel"] == 1]
    ratios = ["%.2f" % (h / l) for h, l in zip(hi, lo)]
    print("\nthroughput by round: %sx --parallel 1" % "x, ".join(ratios))
    print("medians: --parallel %d %.1f tok/s, --parallel 1 %.1f tok/s: %.2fx" % (
        many, pct(hi, 50), pct(lo, 50), pct(hi, 50) / pct(lo, 50)))
    chi = [r["server_cpu_ms_per_token"] for r in rows if r["parallel"] == many and r["server_cpu_ms_per_token"]]
    clo = [r["server_cpu_ms_per_token"] for r in rows if r["parallel"] == 1 and r["server_cpu_ms_per_token"]]
    if chi and clo:
        print("server CPU per token, medians: --parallel %d %.3f ms, --parallel 1 %.3f ms: %.2fx less" % (
            many, pct(chi, 50), pct(clo, 50), pct(clo, 50) / pct(chi, 50)))
    f, s2 = inf["infill"]
    print("/infill: first %.3f s (%d tokens), second %.3f s (%d cached): %.1fx" % (
        f["seconds"], f["tokens_evaluated"], s2["seconds"], s2["tokens_cached"], inf["speedup"]))


if __name__ == "__main__":
    main()
