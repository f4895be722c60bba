#!/usr/bin/env python3
"""Does a model form attention sinks? Measures, on windows of a text, how much attention each layer's heads give
to the window's first token, in f32 with transformers' eager attention:

  - first_token_attention[layer]: the mean over heads, windows and queries (positions 16.. of the window) of
    the attention weight on position 0;
  - sink_ratio: the share of (layer, head) pairs whose mean attention on position 0 exceeds 0.3 (the Sink
    metric of Gu et al., "When Attention Sink Emerges in Language Models", ICLR 2025, with epsilon 0.3).

Windows are crops of the text (position 0 is an arbitrary token), and the same crops with <|bos|> in front.
Prints one JSON object.
  sink_probe.py MODEL_DIR TEXT_FILE [--windows 16] [--length 512]
"""
import argparse
import json

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import LlamaForCausalLM


@torch.no_grad()
def probe(model, windows):
    out = model(input_ids=windows, output_attentions=True)
    per_layer, heads_over = [], 0
    for att in out.attentions:  # [batch, heads, q, k]
        first = att[:, :, 16:, 0].mean(dim=(0, 2))  # per head
        per_layer.append(round(first.mean().item(), 4))
        heads_over += int((first > 0.3).sum().item())
    n_heads = len(out.attentions) * out.attentions[0].shape[1]
    return {"first_token_attention": per_layer, "sink_ratio": round(heads_over / n_heads, 4)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--length", type=int, default=512)
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    ids = np.asarray(tok.encode(open(args.text, encoding="utf-8").read(), add_special_tokens=False).ids)
    rng = np.random.default_rng(7)
    starts = rng.integers(0, len(ids) - args.length, size=args.windows)
    crops = torch.from_numpy(np.stack([ids[s:s + args.length] for s in starts])).to(dev)
    bos = torch.full_like(crops[:, :1], tok.token_to_id("<|bos|>"))
    model = LlamaForCausalLM.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager").to(dev)
    model.eval()
    print(json.dumps({"model": args.model, "crop": probe(model, crops),
                      "bos_then_crop": probe(model, torch.cat([bos, crops[:, :-1]], dim=1))}))


if __name__ == "__main__":
    main()
