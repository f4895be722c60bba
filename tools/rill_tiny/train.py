#!/usr/bin/env python3
"""Trains rill's own small models on the GPU machine: a byte-level BPE tokenizer, rill-tiny (~16M parameters)
and rill-tiny-draft (~5M parameters), both Llama-architecture (RMSNorm, RoPE, SwiGLU, GQA) with a 512-token
training context, sharing the tokenizer. Exports each in Hugging Face format (bf16 safetensors, config.json,
generation_config.json, tokenizer.json, tokenizer_config.json with a chat template) and writes the figures the
model card reports: validation loss and perplexity of the exported bf16 weights, the draft's greedy agreement
with the target, reference logits for rill's golden test, and sample continuations.

Needs PyTorch, tokenizers, transformers and safetensors (the GPU machine has them). The corpus comes from
tools/rill_tiny/build_corpus.py. Everything is seeded; see models/README.md for the command.
"""
import argparse
import gzip
import json
import lzma
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|eos|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
CONTEXT = 512
VAL_EVERY = 50  # every 50th document is held out for validation

SHAPES = {
    # name: (hidden, intermediate, layers, heads, kv heads, peak learning rate)
    "rill-tiny": (384, 1024, 8, 6, 2, 2e-3),
    "rill-tiny-draft": (256, 640, 4, 4, 2, 3e-3),
}


def log(*a):
    print(*a, flush=True)


def read_corpus(path):
    opener = lzma.open if path.endswith(".xz") else gzip.open
    docs = [json.loads(line) for line in opener(path, "rt", encoding="utf-8")]
    train = [d["text"] for i, d in enumerate(docs) if i % VAL_EVERY != VAL_EVERY - 1]
    val = [d["text"] for i, d in enumerate(docs) if i % VAL_EVERY == VAL_EVERY - 1]
    return train, val


def train_tokenizer(texts, vocab_size, out_dir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B",
                                                       special_tokens=[("<|bos|>", bos)])
    os.makedirs(out_dir, exist_ok=True)
    tok.save(f"{out_dir}/tokenizer.json")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|eos|>",
              "pad_token": "<|pad|>", "model_max_length": CONTEXT, "clean_up_tokenization_spaces": False,
              "chat_template": CHAT_TEMPLATE}
    json.dump(config, open(f"{out_dir}/tokenizer_config.json", "w"), indent=2)
    return tok


def load_tokenizer(src_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        with open(f"{src_dir}/{f}", "rb") as src, open(f"{out_dir}/{f}", "wb") as dst:
            dst.write(src.read())
    return Tokenizer.from_file(f"{out_dir}/tokenizer.json")


def write_tokenizer_reference(tok_dir, val_texts, path):
    """What transformers makes of the exported tokenizer: ids with and without special tokens, decodes, and
    chat-template renderings, for rill's tests."""
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(tok_dir)
    texts = ["Once upon a time", "Hello world<|eos|>", "  leading spaces and\ttabs\n\nnew lines  ",
             "Caf\u00e9 na\u00efve \u4e2d\u6587 \U0001F600 \u00bd", "def f(x):\n    return x ** 2  # 1234567"]
    texts += [t[:300] for t in val_texts[:12]]
    cases = [{"text": t, "ids": hf(t)["input_ids"], "ids_no_special": hf(t, add_special_tokens=False)["input_ids"]}
             for t in texts]
    for c in cases:
        c["decoded"] = hf.decode(c["ids"])
        c["decoded_skip_special"] = hf.decode(c["ids"], skip_special_tokens=True)
    chats = [[{"role": "user", "content": "Tell me a story."}],
             [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Who are you?"}]]
    rendered = [{"messages": m, "add_generation_prompt": True,
                 "text": hf.apply_chat_template(m, tokenize=False, add_generation_prompt=True)} for m in chats]
    json.dump({"encodings": cases, "chat": rendered}, open(path, "w"), indent=1, ensure_ascii=False)


def encode_stream(tok, texts):
    """Documents as one stream: <|bos|> text <|eos|> ... (the post-processor adds the BOS)."""
    eos = tok.token_to_id("<|eos|>")
    ids = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def make_model(name, vocab, bos, eos, pad):
    hidden, inter, layers, heads, kv, _ = SHAPES[name]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, head_dim=hidden // heads,
                      max_position_embeddings=CONTEXT, rms_norm_eps=1e-5, rope_theta=10000.0,
                      tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
                      attention_bias=False, mlp_bias=False, initializer_range=0.02)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def lr_at(step, steps, peak, warmup=100):
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def evaluate(model, windows, batch=32):
    """Mean next-token loss over [n, CONTEXT + 1] windows, computed in f32."""
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        x = windows[i:i + batch]
        logits = model(input_ids=x[:, :-1]).logits.float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum").item()
        count += x[:, 1:].numel()
    return total / count


@torch.no_grad()
def first_token_attention(model, windows, tok):
    """tools/rill_tiny/sink_probe.py's per-layer attention on position 0, on windows that start with <|bos|>."""
    from sink_probe import probe
    bos = torch.full_like(windows[:, :1], tok.token_to_id("<|bos|>"))
    was = model.config._attn_implementation
    model.config._attn_implementation = "eager"  # the only one that returns attention weights
    model.eval()
    try:
        return probe(model, torch.cat([bos, windows[:, :-1]], dim=1))
    finally:
        model.config._attn_implementation = was
        model.train()


def batch_at(data, offsets, arange, bos):
    """One step's [batch, CONTEXT + 1] windows: crops of the token stream, or with --bos-first, <|bos|> and then a
    crop of CONTEXT tokens (so position 0 is always the same token, as when every document starts a window)."""
    if bos is None:
        return data[offsets[:, None] + arange]
    x = data[offsets[:, None] + arange[:-1]]
    return torch.cat([torch.full_like(x[:, :1], bos), x], dim=1)


def train(name, train_ids, val_windows, tok, args, out_dir):
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = make_model(name, tok.get_vocab_size(), tok.token_to_id("<|bos|>"), tok.token_to_id("<|eos|>"),
                       tok.token_to_id("<|pad|>")).cuda()
    init = os.path.join(args.init, name) if args.init else None
    if init and os.path.isdir(init):  # go on training an exported model (the optimizer starts afresh)
        model.load_state_dict(LlamaForCausalLM.from_pretrained(init, dtype=torch.float32).state_dict())
        log(f"{name}: starting from {init}")
    else:
        init = None
    budget = per_model(args.time_budget, args, name)
    params = sum(p.numel() for p in model.parameters())
    log(f"{name}: {params / 1e6:.2f}M parameters")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    peak = args.peak_lr or SHAPES[name][5]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=peak, betas=(0.9, 0.95), eps=1e-8, fused=True)
    data = torch.from_numpy(train_ids).cuda()
    max_steps = int(per_model(args.steps, args, name))
    offsets_all = rng.integers(0, len(train_ids) - CONTEXT - 1, size=(max_steps, args.batch))
    arange = torch.arange(CONTEXT + 1, device="cuda")
    bos = tok.token_to_id("<|bos|>") if args.bos_first else None
    steps = max_steps
    curve = []
    forward = model
    if args.compile:  # the same parameters; evaluation and the probe keep using `model` uncompiled
        forward = torch.compile(model)
    t0 = time.time()
    model.train()
    step = 0
    while step < steps:
        if budget and step == 20:
            t20 = time.time()
        if budget and step == 220:
            # The whole cosine schedule fits the budget: steps from the speed of steps 20..220 (the first ones
            # are slower while kernels are chosen).
            left = budget - (time.time() - t0)
            steps = max(step + 1, min(max_steps, step + int(left * 200 / (time.time() - t20))))
            log(f"{name}: {steps} steps fit {budget:.0f} s")
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, peak)
        x = batch_at(data, torch.from_numpy(offsets_all[step]).cuda(), arange, bos)
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = forward(input_ids=x[:, :-1]).logits
        except Exception as e:  # noqa: BLE001 -- a compiler that fails on this machine: train eagerly instead
            if forward is model:
                raise
            log(f"{name}: torch.compile failed ({type(e).__name__}: {str(e)[:300]}); training eagerly")
            forward = model
            continue
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            entry = {"step": step, "train_loss": round(loss.item(), 4), "seconds": round(time.time() - t0, 1)}
            if step % 500 == 0 or step == steps - 1:
                model.eval()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    entry["val_loss"] = round(evaluate(model, val_windows[:64]), 4)
                model.train()
            if args.probe_every and step % args.probe_every == 0:
                entry["first_token_attention"] = first_token_attention(model, val_windows[:8, 1:] if bos is not None else val_windows[:8, :-1], tok)
            curve.append(entry)
            tokens = (step + 1) * args.batch * CONTEXT
            log(f"{name} step {step}: {entry} ({tokens / (time.time() - t0) / 1e3:.0f}k tokens/s)")
        step += 1
    seconds = time.time() - t0
    model.eval()
    model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out_dir)
    tok_dir = os.path.join(args.out, "tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        with open(f"{tok_dir}/{f}", "rb") as src, open(f"{out_dir}/{f}", "wb") as dst:
            dst.write(src.read())
    return {"parameters": params, "steps": steps, "batch": args.batch, "context": CONTEXT,
            "tokens_seen": steps * args.batch * CONTEXT, "peak_lr": peak, "weight_decay": args.weight_decay,
            "bos_first": args.bos_first, "init": init, "compiled": forward is not model, "train_seconds": round(seconds, 1),
            "curve": curve}


def per_model(value, args, name):
    """An option given as one figure, or as one per model of --models ("N1,N2")."""
    if not value:
        return None
    figures = [float(b) for b in str(value).split(",")]
    names = args.models.split(",")
    return figures[names.index(name)] if len(figures) == len(names) else figures[0]


def load_f32(path):
    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=".device/rill-tiny/corpus.jsonl.gz", help="from build_corpus.py (.gz or .xz)")
    ap.add_argument("--out", required=True, help="output folder: tokenizer/, rill-tiny/, rill-tiny-draft/, ...")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", default="1200", help="training steps (one figure, or one per model of --models)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--models", default="rill-tiny,rill-tiny-draft")
    ap.add_argument("--tokenizer", help="reuse this folder's tokenizer.json and tokenizer_config.json instead of "
                    "training one (to retrain one model so that it still shares the other's tokenizer)")
    ap.add_argument("--bos-first", action="store_true", help="start every training window with <|bos|>")
    ap.add_argument("--peak-lr", type=float, help="peak learning rate (default: per model, see SHAPES)")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--compile", action="store_true", help="train through torch.compile (falls back to eager "
                    "if compiling fails)")
    ap.add_argument("--probe-every", type=int, default=0, help="log the first-token attention every N steps")
    ap.add_argument("--time-budget", help="seconds of training: fewer steps than --steps if needed, with the "
                    "learning-rate schedule fitted to them (one figure, or one per model of --models)")
    ap.add_argument("--init", help="start each model from DIR/NAME (an exported folder) where there is one")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    t0 = time.time()
    train_texts, val_texts = read_corpus(args.corpus)
    if args.tokenizer:
        tok = load_tokenizer(args.tokenizer, f"{args.out}/tokenizer")
    else:
        tok = train_tokenizer(train_texts, args.vocab, f"{args.out}/tokenizer")
    train_ids, val_ids = encode_stream(tok, train_texts), encode_stream(tok, val_texts)
    corpus_bytes = sum(len(t.encode()) for t in train_texts)
    log(f"tokenizer: vocab {tok.get_vocab_size()}, train {len(train_ids)} tokens ({corpus_bytes / len(train_ids):.2f} "
        f"bytes/token), val {len(val_ids)} tokens; {time.time() - t0:.0f}s")
    write_tokenizer_reference(f"{args.out}/tokenizer", val_texts, f"{args.out}/tokenizer-reference.json")
    n_val = min(256, (len(val_ids) - 1) // (CONTEXT + 1))
    val_windows = torch.from_numpy(val_ids[:n_val * (CONTEXT + 1)].reshape(n_val, CONTEXT + 1)).cuda()
    if args.bos_first:  # validate as trained: <|bos|> then CONTEXT tokens
        val_windows = batch_at(val_windows.reshape(-1), torch.arange(n_val, device="cuda") * (CONTEXT + 1),
                               torch.arange(CONTEXT + 1, device="cuda"), tok.token_to_id("<|bos|>"))
    report = {"tokenizer": {"vocab": tok.get_vocab_size(), "train_tokens": int(len(train_ids)),
                            "val_tokens": int(len(val_ids)), "train_bytes": corpus_bytes,
                            "bytes_per_token": round(corpus_bytes / len(train_ids), 3)},
              "seed": args.seed, "val_windows": n_val, "models": {}}

    names = args.models.split(",")
    for name in names:
        with torch.enable_grad():
            report["models"][name] = train(name, train_ids, val_windows, tok, args, f"{args.out}/{name}")

    # Figures of the exported bf16 weights, computed in f32 (as rill's CPU backend computes).
    logits_of = {}
    held = torch.from_numpy(val_ids[-257:-1]).cuda()[None]  # 256 held-out tokens, outside the val windows
    for name in names:
        model = load_f32(f"{args.out}/{name}")
        loss = evaluate(model, val_windows)
        report["models"][name].update({"val_loss": round(loss, 4), "val_perplexity": round(math.exp(loss), 3)})
        log(f"{name}: val loss {loss:.4f}, perplexity {math.exp(loss):.2f}")
        argmax = []
        for i in range(0, n_val, 32):
            argmax.append(model(input_ids=val_windows[i:i + 32, :-1]).logits.argmax(-1))
        logits_of[name] = torch.cat(argmax)
        # Reference for rill: logits on the held text and a greedy continuation.
        ref = model(input_ids=held).logits[0].float()
        prompt = held[:, :64]
        seq = prompt
        for _ in range(32):  # greedy, not stopping at EOS (as `rill generate --ignore-eos`)
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        greedy = seq[0, 64:]
        p64 = model(input_ids=prompt).logits[0].float()
        save_file({"held_ids": held[0].cpu().contiguous(), "held_logits": ref.cpu().contiguous(),
                   "prompt_ids": prompt[0].cpu().contiguous(), "last4_logits": p64[-4:].cpu().contiguous(),
                   "greedy_ids": greedy.cpu().contiguous()}, f"{args.out}/{name}-reference.safetensors")
        story = tok.encode("Once upon a time").ids
        s = torch.tensor([story], device="cuda")
        out = model.generate(s, attention_mask=torch.ones_like(s), max_new_tokens=80, do_sample=False,
                             repetition_penalty=1.0, pad_token_id=tok.token_to_id("<|pad|>"))[0]
        report["models"][name]["greedy_once_upon_a_time"] = tok.decode(out.tolist(), skip_special_tokens=True)
        log(f"{name} greedy: {report['models'][name]['greedy_once_upon_a_time']!r}")
        del model
        torch.cuda.empty_cache()
    if len(names) == 2:
        agree = (logits_of[names[0]] == logits_of[names[1]]).float().mean().item()
        report["draft_greedy_agreement"] = round(agree, 4)
        log(f"draft greedy agreement with the target: {agree:.4f}")
    report["total_seconds"] = round(time.time() - t0, 1)
    json.dump(report, open(f"{args.out}/report.json", "w"), indent=2)


if __name__ == "__main__":
    main()
