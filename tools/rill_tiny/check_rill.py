#!/usr/bin/env python3
"""Checks that rill computes the same logits as Hugging Face transformers for an exported model: runs
`rill generate --dump-logits` on the held-out ids in NAME-reference.safetensors (written by train.py) and prints
max |rill - HF| / max |HF| over all positions and the vocabulary. Needs numpy and safetensors.

Usage: check_rill.py RILL_BINARY MODEL_DIR REFERENCE.safetensors"""
import json
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file


def main():
    rill, model, reference = sys.argv[1:4]
    ref = load_file(reference)
    ids = ref["held_ids"].tolist()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([rill, "generate", "--model", model, "--prompt-ids", ",".join(map(str, ids)), "-n", "0",
                        "--dump-logits", f"{tmp}/logits.safetensors"], check=True, capture_output=True)
        got = load_file(f"{tmp}/logits.safetensors")["logits"].astype(np.float64)
    want = ref["held_logits"].astype(np.float64)
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    argmax_equal = float((got.argmax(-1) == want.argmax(-1)).mean())
    print(json.dumps({"model": model, "positions": len(ids), "vocab": int(want.shape[1]),
                      "max_abs_diff_over_max_abs_ref": rel, "argmax_equal": argmax_equal, "pass": rel <= 1e-3}))
    return 0 if rel <= 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
