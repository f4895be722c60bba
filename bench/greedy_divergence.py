"""Where two greedy continuations of one prompt part, and by how much rill's logits separated the two choices there.
  /usr/bin/python3 bench/greedy_divergence.py RILL MODEL_DIR PROMPT RILL_JSON LLAMA_TEXT_FILE [--threads N]
RILL_JSON is `rill generate --output json` of the prompt (prompt_ids, ids); the llama.cpp text is tokenized with
rill's tokenizer (the same vocabulary). The logits are rill's (--dump-logits) at the first token that differs:
a gap that is small next to the largest logit is a near tie, which llama.cpp's rounding of activations to bf16
before each bf16 dot product can flip."""
import json
import struct
import subprocess
import sys
import tempfile

import numpy as np

rill, model, prompt, rill_json, llama_file = sys.argv[1:6]
threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "0"
r = json.load(open(rill_json))
llama_text = open(llama_file, encoding="utf-8", errors="replace").read().rstrip("\n")
out = subprocess.run([rill, "tokenize", "-m", model, "--text", prompt + llama_text, "--output", "json"],
                     capture_output=True, text=True, check=True).stdout
both = json.loads(out)["ids"]
prompt_ids, rill_ids = r["prompt_ids"], r["ids"]
if both[:len(prompt_ids)] != prompt_ids:
    print("llama.cpp's text does not re-tokenize after the prompt's ids; no margin computed")
    sys.exit(0)
llama_ids = both[len(prompt_ids):]
i = next((k for k, (a, b) in enumerate(zip(rill_ids, llama_ids)) if a != b), None)
if i is None:
    print(f"the same {min(len(rill_ids), len(llama_ids))} tokens")
    sys.exit(0)
with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
    ids = ",".join(map(str, prompt_ids + rill_ids[:i]))
    subprocess.run([rill, "generate", "-m", model, "--device", "cpu", "--threads", threads, "--prompt-ids", ids,
                    "-n", "1", "--temperature", "0", "--dump-logits", f.name],
                   capture_output=True, check=True)
    raw = open(f.name, "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
info = json.loads(raw[8:8 + n])["logits"]
a, b = info["data_offsets"]
logits = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=np.float32).reshape(info["shape"])[-1]
gap = float(logits[rill_ids[i]] - logits[llama_ids[i]])
top = float(np.abs(logits).max())
print(f"the same first {i} tokens; at token {i + 1} rill picks {rill_ids[i]}, llama.cpp {llama_ids[i]}, whose "
      f"logits (rill's) are {gap:.2e} apart = {gap / top:.1e} of the largest logit ({top:.2f})")
