"""Converts a Hugging Face Llama checkpoint to GGUF with llama.cpp's convert_hf_to_gguf.py, for benchmarks of
random-weight models whose tokenizer llama.cpp does not know by hash (it only tells the pre-tokenizer from
the token ids of a test string): the pre-tokenizer is declared to be Llama 3's ("llama-bpe"). The weights and
the hyperparameters are converted as the script does for any Llama model.
  python3 bench/llamacpp_convert.py LLAMA_CPP_SOURCE_DIR MODEL_DIR OUT.gguf [--outtype bf16]"""
import sys

src, model, out = sys.argv[1:4]
sys.path[:0] = [src, src + "/gguf-py"]
import conversion.base as base  # noqa: E402  (llama.cpp's conversion package)

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "llama-bpe"
import convert_hf_to_gguf  # noqa: E402

sys.argv = ["convert_hf_to_gguf.py", model, "--outfile", out] + (sys.argv[4:] or ["--outtype", "bf16"])
convert_hf_to_gguf.main()
