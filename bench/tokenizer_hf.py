"""Hugging Face tokenizers' single-threaded encode throughput, the same measurement as tokenizer_encode.

    TOKENIZERS_PARALLELISM=false RAYON_NUM_THREADS=1 python3 bench/tokenizer_hf.py --text FILE TOKENIZER.json...
"""
import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
import tokenizers  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--text", required=True)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--per-line", action="store_true", help="encode each line separately (encode_batch, one thread)")
p.add_argument("tokenizers", nargs="+")
a = p.parse_args()
text = open(a.text, encoding="utf-8").read()
nbytes = len(text.encode("utf-8"))
for path in a.tokenizers:
    tok = tokenizers.Tokenizer.from_file(path)
    lines = text.splitlines(keepends=True)

    def encode_all():
        if a.per_line:
            return [i for e in tok.encode_batch(lines, add_special_tokens=False) for i in e.ids]
        return tok.encode(text, add_special_tokens=False).ids

    ids = encode_all()  # warm-up
    n = len(ids)
    checksum = 1469598103934665603  # FNV-1a over the ids, as tokenizer_encode computes it
    for i in ids:
        checksum = ((checksum ^ i) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    secs = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        n = len(encode_all())
        secs.append(time.perf_counter() - t0)
    med = statistics.median(secs)
    print(json.dumps({"engine": "hf-tokenizers " + tokenizers.__version__, "mode": "per-line" if a.per_line else "whole", "tokenizer": path, "bytes": nbytes,
                      "tokens": n, "ids_fnv1a": str(checksum), "seconds": med, "MB_per_s": nbytes / med / 1e6}))
