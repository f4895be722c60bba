#!/usr/bin/env python3
"""Compares two trainings of the same model (reproducibility): per-tensor max |a - b| relative to max |a|, and
the relative RMS difference over all weights. Usage: compare_weights.py MODEL_DIR_A MODEL_DIR_B"""
import json
import sys

import torch
from safetensors.torch import load_file


def main():
    a, b = (load_file(f"{d}/model.safetensors") for d in sys.argv[1:3])
    assert a.keys() == b.keys(), "different tensors"
    worst, num, den = 0.0, 0.0, 0.0
    for k in a:
        x, y = a[k].double(), b[k].double()
        worst = max(worst, ((x - y).abs().max() / x.abs().max()).item())
        num += ((x - y) ** 2).sum().item()
        den += (x ** 2).sum().item()
    print(json.dumps({"a": sys.argv[1], "b": sys.argv[2], "tensors": len(a), "max_rel_diff": worst,
                      "rms_rel_diff": (num / den) ** 0.5, "identical": worst == 0.0}))


if __name__ == "__main__":
    main()
