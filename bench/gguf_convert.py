"""Writes a Llama-family Hugging Face checkpoint (config.json, model.safetensors, tokenizer.json) as a GGUF file
for llama.cpp, with numpy and llama.cpp's own gguf-py only (convert_hf_to_gguf.py needs torch, which this
machine lacks). The benchmarks against llama.cpp use it to give both engines the same weights, bit for bit:
  /usr/bin/python3 bench/gguf_convert.py LLAMA_CPP_SOURCE_DIR MODEL_DIR OUT.gguf [--tokenizer DIR]
Weights keep their dtype (bf16, f16 or f32; 1-D norms become f32, as llama.cpp's converter does); q_proj and
k_proj rows are permuted from Hugging Face's half-split RoPE layout to llama.cpp's interleaved one, as
convert_hf_to_gguf.py does. The vocabulary: a byte-level BPE tokenizer.json (GPT-2 pre-tokenizer) as "gpt2",
or, with a tokenizer.model beside it (SentencePiece), as "llama" with the pieces' scores."""
import json
import os
import struct
import sys

import numpy as np

src, model_dir, out = sys.argv[1:4]
tok_dir = sys.argv[sys.argv.index("--tokenizer") + 1] if "--tokenizer" in sys.argv else model_dir
sys.path.insert(0, os.path.join(src, "gguf-py"))
import gguf  # noqa: E402  (llama.cpp's gguf-py)

cfg = json.load(open(os.path.join(model_dir, "config.json")))
if cfg.get("model_type") not in ("llama", "mistral"):
    sys.exit(f"{model_dir}/config.json: model_type {cfg.get('model_type')!r} is not a Llama model")


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    kinds = {"BF16": (np.uint16, gguf.GGMLQuantizationType.BF16), "F16": (np.float16, None),
             "F32": (np.float32, None)}
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in kinds:
            sys.exit(f"{path}: tensor {name}: dtype {info['dtype']} not supported here")
        a, b = info["data_offsets"]
        dt, raw = kinds[info["dtype"]]
        tensors[name] = (data[a:b].view(dt).reshape(info["shape"]), raw)
    return tensors


tensors = {}
for f in sorted(os.listdir(model_dir)):
    if f.endswith(".safetensors"):
        tensors.update(read_safetensors(os.path.join(model_dir, f)))

d, L = cfg["hidden_size"], cfg["num_hidden_layers"]
H = cfg["num_attention_heads"]
KV = cfg.get("num_key_value_heads", H)
hd = cfg.get("head_dim") or d // H
rope = cfg.get("rope_parameters") or {}
theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
if rope.get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
    sys.exit(f"{model_dir}/config.json: RoPE scaling is not converted here")

w = gguf.GGUFWriter(out, "llama")
w.add_name(os.path.basename(os.path.normpath(model_dir)))
w.add_context_length(cfg.get("max_position_embeddings", 2048))
w.add_embedding_length(d)
w.add_block_count(L)
w.add_feed_forward_length(cfg["intermediate_size"])
w.add_head_count(H)
w.add_head_count_kv(KV)
w.add_rope_freq_base(theta)
w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
w.add_rope_dimension_count(hd)
w.add_key_length(hd)
w.add_value_length(hd)
w.add_vocab_size(cfg["vocab_size"])
dtypes = {t[0].dtype for t in tensors.values() if t[0].ndim == 2}
w.add_file_type(gguf.LlamaFileType.MOSTLY_BF16 if np.dtype(np.uint16) in dtypes
                else gguf.LlamaFileType.MOSTLY_F16 if np.dtype(np.float16) in dtypes else gguf.LlamaFileType.ALL_F32)

# The vocabulary.
tj = json.load(open(os.path.join(tok_dir, "tokenizer.json")))
tc_path = os.path.join(tok_dir, "tokenizer_config.json")
tc = json.load(open(tc_path)) if os.path.exists(tc_path) else {}
vocab_n = cfg["vocab_size"]
added = {a["id"]: a for a in tj.get("added_tokens", [])}
TT = gguf.TokenType


def pad_to(tokens, scores, types):
    while len(tokens) < vocab_n:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-1000.0)
        types.append(TT.UNUSED)


def sentencepiece_pieces(path):
    """(piece, score, type) of a SentencePiece model: field 1 of ModelProto, read with a minimal protobuf walk."""
    buf = open(path, "rb").read()

    def varint(b, i):
        v = s = 0
        while True:
            c = b[i]
            i += 1
            v |= (c & 0x7F) << s
            s += 7
            if c < 0x80:
                return v, i

    def fields(b):
        i = 0
        while i < len(b):
            key, i = varint(b, i)
            num, wt = key >> 3, key & 7
            if wt == 0:
                v, i = varint(b, i)
            elif wt == 1:
                v, i = b[i:i + 8], i + 8
            elif wt == 2:
                n, i = varint(b, i)
                v, i = b[i:i + n], i + n
            elif wt == 5:
                v, i = b[i:i + 4], i + 4
            else:
                raise ValueError(f"{path}: protobuf wire type {wt}")
            yield num, v

    for num, v in fields(buf):
        if num == 1:
            piece, score, kind = "", 0.0, 1
            for n, x in fields(v):
                if n == 1:
                    piece = x.decode("utf-8")
                elif n == 2:
                    (score,) = struct.unpack("<f", x)
                elif n == 3:
                    kind = x
            yield piece, score, kind


spm = os.path.join(tok_dir, "tokenizer.model")
if os.path.exists(spm):
    tokens, scores, types = [], [], []
    # SentencePiece piece types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    kinds = {1: TT.NORMAL, 2: TT.UNKNOWN, 3: TT.CONTROL, 4: TT.USER_DEFINED, 5: TT.UNUSED, 6: TT.BYTE}
    for piece, score, kind in sentencepiece_pieces(spm):
        tokens.append(piece)
        scores.append(score)
        types.append(kinds.get(kind, TT.NORMAL))
    pad_to(tokens, scores, types)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_add_bos_token(tc.get("add_bos_token", True))
    w.add_add_eos_token(tc.get("add_eos_token", False))
else:
    m = tj["model"]
    pre = tj.get("pre_tokenizer") or {}
    if m["type"] != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        sys.exit(f"{tok_dir}/tokenizer.json: only byte-level BPE with the GPT-2 pre-tokenizer is converted here")
    by_id = {i: t for t, i in m["vocab"].items()}
    by_id.update({i: a["content"] for i, a in added.items()})
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(max(by_id) + 1)]
    types = [TT.CONTROL if i in added and added[i]["special"] else TT.USER_DEFINED if i in added
             else TT.NORMAL if i in by_id else TT.UNUSED for i in range(len(tokens))]
    scores = [0.0] * len(tokens)
    pad_to(tokens, scores, types)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(x) if isinstance(x, list) else x for x in m["merges"]])
    post = json.dumps(tj.get("post_processor") or {})
    w.add_add_bos_token('"SpecialToken"' in post)
ids = {a["content"]: i for i, a in added.items()}
for key, setter in (("bos_token", w.add_bos_token_id), ("eos_token", w.add_eos_token_id),
                    ("pad_token", w.add_pad_token_id), ("unk_token", w.add_unk_token_id)):
    t = tc.get(key)
    t = t.get("content") if isinstance(t, dict) else t
    if t in ids:
        setter(ids[t])
    elif isinstance(t, str) and t in tokens:
        setter(tokens.index(t))
for key, setter in (("bos_token_id", w.add_bos_token_id), ("eos_token_id", w.add_eos_token_id)):
    if key in cfg and isinstance(cfg[key], int) and not tc.get(key.replace("_id", "")):
        setter(cfg[key])


# The tensors, in llama.cpp's names.
def permute(x, heads):  # Hugging Face's [h, 2, hd/2] row order -> llama.cpp's [h, hd/2, 2]
    return x.reshape(heads, 2, x.shape[0] // heads // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def put(gname, hname, heads=None):
    if hname not in tensors:
        sys.exit(f"{model_dir}: tensor {hname} is missing")
    x, raw = tensors[hname]
    if heads:
        x = permute(x, heads)
    if x.ndim == 1:  # norms as f32
        x, raw = (x.astype(np.uint32) << 16).view(np.float32) if raw else x.astype(np.float32), None
    w.add_tensor(gname, np.ascontiguousarray(x), raw_dtype=raw)


put("token_embd.weight", "model.embed_tokens.weight")
put("output_norm.weight", "model.norm.weight")
if "lm_head.weight" in tensors and not cfg.get("tie_word_embeddings", False):
    put("output.weight", "lm_head.weight")
for i in range(L):
    p = f"model.layers.{i}."
    put(f"blk.{i}.attn_norm.weight", p + "input_layernorm.weight")
    put(f"blk.{i}.attn_q.weight", p + "self_attn.q_proj.weight", H)
    put(f"blk.{i}.attn_k.weight", p + "self_attn.k_proj.weight", KV)
    put(f"blk.{i}.attn_v.weight", p + "self_attn.v_proj.weight")
    put(f"blk.{i}.attn_output.weight", p + "self_attn.o_proj.weight")
    put(f"blk.{i}.ffn_norm.weight", p + "post_attention_layernorm.weight")
    put(f"blk.{i}.ffn_gate.weight", p + "mlp.gate_proj.weight")
    put(f"blk.{i}.ffn_up.weight", p + "mlp.up_proj.weight")
    put(f"blk.{i}.ffn_down.weight", p + "mlp.down_proj.weight")

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"{out}: {len(tensors)} tensors, vocabulary of {len(tokens)}")
