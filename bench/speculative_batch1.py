#!/usr/bin/env python3
"""Speculative decoding at batch 1 through `rill generate`, the way a user runs it (issue 22).

rill-tiny with and without speculation (--spec draft: rill-tiny-draft; --spec ngram) on text that is not in
rill-tiny's training corpus (Shakespeare; rill-tiny learned the King James Bible and Vim/Git documentation):
  - "story": five passages, each continued for N tokens, greedy and T 0.7 (seeded);
  - "copy": a passage followed by its first words again, so that the continuation repeats the prompt (the
    summarisation / code-edit pattern n-gram lookup is for).
Each (workload, temperature, method) runs ROUNDS processes of `rill generate --repeat 2` (the second run of each,
warm, is timed), alternating methods round by round; a figure is the median over rounds and passages. The decode
rate is the generated tokens after the first over the time from the first to the last. The token ids of every
method are compared with those of --spec none (the same on the CPU; on a GPU, only under RILL_BATCH_INVARIANT=1).

usage: speculative_batch1.py RILL TEXT [--model models/rill-tiny] [--device cpu|cuda] [--n 256] [--rounds 3] [--k K]
"""
import argparse
import json
import re
import statistics
import subprocess
import sys


def run(rill, model, prompt, method, temperature, device, n, k, env=None):
    cmd = [rill, "generate", "-m", model, "-p", prompt, "-n", str(n), "--ignore-eos", "--temperature", str(temperature),
           "--seed", "7", "--spec", method, "--repeat", "2", "--device", device, "--output", "json"]
    if k and method != "none":
        cmd += ["--spec-tokens", str(k)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"rill generate failed ({' '.join(cmd[:3])} --spec {method}): {p.stderr[-2000:]}")
    ids = [json.loads(line)["ids"] for line in p.stdout.splitlines() if line.startswith("{")]
    rates = [float(m.group(1)) for m in re.finditer(r"generated in [0-9.]+ s \(([0-9.]+) tok/s\)", p.stderr)]
    spec = re.findall(r"speculation: (\d+) of (\d+) drafts accepted \((\d+)%\), ([0-9.]+) tokens per verification",
                      p.stderr)
    return {"ids": ids[-1], "rate": rates[-1], "spec": spec[-1] if spec else None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rill")
    ap.add_argument("text")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, default=0)
    ap.add_argument("--methods", default="none,draft,ngram")
    ap.add_argument("--model", default="models/rill-tiny")
    a = ap.parse_args()
    text = open(a.text, encoding="utf-8").read()
    # Passages from the middle of the play text, cut at line ends: ~600 characters (~150 rill-tiny tokens).
    offsets = [40_000, 180_000, 400_000, 650_000, 900_000]
    def passage(off, size):
        start = text.index("\n\n", off) + 2
        end = text.rfind("\n", start, start + size)
        return text[start:end]
    story = [passage(o, 600) for o in offsets]
    copy = []
    for o in offsets[:3]:
        p = passage(o + 5000, 1200)
        copy.append(p + "\n\n" + p[: p.index("\n", 120)])
    methods = a.methods.split(",")
    rows = []
    for name, prompts in (("story", story), ("copy", copy)):
        for temp in (0, 0.7):
            rates = {m: [] for m in methods}
            stats = {m: [] for m in methods}
            same = {m: True for m in methods}
            for r in range(a.rounds):
                order = methods if r % 2 == 0 else list(reversed(methods))
                for i, prompt in enumerate(prompts):
                    got = {m: run(a.rill, a.model, prompt, m, temp, a.device, a.n, a.k) for m in order}
                    for m in methods:
                        rates[m].append(got[m]["rate"])
                        if got[m]["spec"]:
                            stats[m].append(got[m]["spec"])
                        same[m] = same[m] and got[m]["ids"] == got["none"]["ids"]
            base = statistics.median(rates["none"])
            for m in methods:
                acc = prop = 0
                per_verify = []
                for s in stats[m]:
                    acc += int(s[0])
                    prop += int(s[1])
                    per_verify.append(float(s[3]))
                row = {"workload": name, "temperature": temp, "method": m, "decode_tokens_per_s": statistics.median(rates[m]),
                       "speedup": statistics.median(rates[m]) / base, "same_ids_as_none": same[m],
                       "acceptance": acc / prop if prop else None,
                       "tokens_per_verification": statistics.median(per_verify) if per_verify else None}
                rows.append(row)
                print(f"{name:5s} T {temp:<3} {m:5s} {row['decode_tokens_per_s']:9.1f} tok/s  {row['speedup']:5.2f}x"
                      + (f"  acceptance {row['acceptance']:.0%}, {row['tokens_per_verification']:.2f} tokens/verify"
                         if row["acceptance"] is not None else "")
                      + ("" if same[m] else "  (ids differ from --spec none)"), flush=True)
    print(json.dumps({"device": a.device, "n": a.n, "rounds": a.rounds, "k": a.k or "default", "rows": rows}))


if __name__ == "__main__":
    main()
