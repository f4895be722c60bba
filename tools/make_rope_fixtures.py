"""Reference outputs for the RoPE scaling types the shared fixtures do not cover (linear, dynamic, yarn).

Runs where Hugging Face transformers is installed (the GPU machine has 5.17). For each type it builds a tiny
random Llama, saves it in float32 (config.json + model.safetensors), and computes float64 logits for a
100-token prompt, past the 64-token original context, into expected.safetensors (prompt_ids, logits).
Writes OUT/rope_fixtures.tar.gz; unpack it into tests/data/.

    python3 tools/make_rope_fixtures.py OUT_DIR
"""
import os
import sys
import tarfile

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

out = sys.argv[1]
root = os.path.join(out, "rope")
torch.manual_seed(0)
cases = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
}
for name, scaling in cases.items():
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64 if name != "yarn" else 256,
                      rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=scaling, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    d = os.path.join(root, name)
    model.save_pretrained(d, safe_serialization=True)
    prompt = torch.randint(0, 128, (1, 100))
    ref = LlamaForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = ref(prompt).logits[0]
    save_file({"prompt_ids": prompt[0].to(torch.int64), "logits": logits.to(torch.float32)},
              os.path.join(d, "expected.safetensors"))
    for f in os.listdir(d):
        if f not in ("config.json", "model.safetensors", "expected.safetensors"):
            os.remove(os.path.join(d, f))
    print(name, "rope:", getattr(ref.config, "rope_parameters", None) or ref.config.rope_scaling)
with tarfile.open(os.path.join(out, "rope_fixtures.tar.gz"), "w:gz") as t:
    t.add(root, arcname="rope")
print("wrote", os.path.join(out, "rope_fixtures.tar.gz"))
