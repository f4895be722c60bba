#include "formats/llama2c.h"

#include <cstring>
#include <vector>

#include "core/error.h"
#include "formats/mapped_file.h"

namespace rill {

void permute_interleaved_to_half(const float* src, float* dst, int heads, int head_dim, int64_t cols) {
  const int half = head_dim / 2;
  for (int h = 0; h < heads; ++h)
    for (int i = 0; i < half; ++i)
      for (int which = 0; which < 2; ++which) {
        const float* from = src + (int64_t(h) * head_dim + 2 * i + which) * cols;
        float* to = dst + (int64_t(h) * head_dim + which * half + i) * cols;
        std::memcpy(to, from, size_t(cols) * sizeof(float));
      }
}

namespace {

constexpr uint32_t kMagic = 0x616b3432;  // "ak42"

class Cursor {
 public:
  Cursor(std::shared_ptr<MappedFile> f, size_t offset) : file_(std::move(f)), offset_(offset) {}

  // A [rows, cols] f32 view into the map (no copy).
  Tensor take(const std::string& what, int64_t rows, int64_t cols) {
    Tensor t;
    t.dtype = DType::F32;
    t.shape = cols > 0 ? Shape{rows, cols} : Shape{rows};
    const size_t bytes = t.nbytes();
    RILL_CHECK(offset_ + bytes <= file_->size(),
               file_->path() + ": truncated llama2.c checkpoint: '" + what + "' needs bytes up to " +
                   std::to_string(offset_ + bytes) + " but the file has " + std::to_string(file_->size()));
    t.data = const_cast<uint8_t*>(file_->data() + offset_);
    t.storage = file_;
    offset_ += bytes;
    return t;
  }
  void skip(size_t bytes) { offset_ += bytes; }
  size_t offset() const { return offset_; }

 private:
  std::shared_ptr<MappedFile> file_;
  size_t offset_;
};

std::string layer_name(int l, const char* suffix) {
  return "model.layers." + std::to_string(l) + "." + suffix;
}

}  // namespace

Llama2cCheckpoint read_llama2c(const std::string& path) {
  auto file = MappedFile::open(path);
  RILL_CHECK(file->size() >= 28, path + ": truncated llama2.c checkpoint (no header)");
  int32_t hdr[9];
  std::memcpy(hdr, file->data(), std::min<size_t>(sizeof(hdr), file->size()));
  int version = 0;
  size_t offset = 28;
  const int32_t* p = hdr;
  bool shared_classifier;
  if (uint32_t(hdr[0]) == kMagic) {
    version = hdr[1];
    RILL_CHECK(version == 1, path + ": llama2.c checkpoint version " + std::to_string(version) +
                                 " is not supported (supported: legacy and version 1 float32; version 2 is int8)");
    RILL_CHECK(file->size() >= 256, path + ": truncated llama2.c checkpoint (header)");
    p = hdr + 2;
    shared_classifier = file->data()[36] != 0;
    offset = 256;
  } else {
    shared_classifier = p[5] > 0;  // legacy: a negative vocab size means a separate classifier follows
  }

  ModelConfig c;
  c.architecture = "llama2.c";
  c.model_type = "llama";
  c.arch = Arch::Llama;
  c.hidden_size = p[0];
  c.intermediate_size = p[1];
  c.num_layers = p[2];
  c.num_heads = p[3];
  c.num_kv_heads = p[4];
  c.vocab_size = p[5] < 0 ? -p[5] : p[5];
  c.max_position_embeddings = p[6];
  c.rms_norm_eps = 1e-5f;
  c.rope.theta = 10000.0;
  c.tie_word_embeddings = shared_classifier;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  RILL_CHECK(c.num_heads > 0 && c.hidden_size > 0 && c.hidden_size % c.num_heads == 0,
             path + ": implausible llama2.c header (dim " + std::to_string(c.hidden_size) + ", heads " +
                 std::to_string(c.num_heads) + "): not a llama2.c checkpoint?");
  c.head_dim = c.hidden_size / c.num_heads;
  c.validate(path);
  // Guard against absurd headers before computing sizes from them.
  RILL_CHECK(int64_t(c.vocab_size) * c.hidden_size <= int64_t(file->size()) / 4 &&
                 c.num_layers < 100000 && c.max_position_embeddings < (1 << 24),
             path + ": llama2.c header does not match the file size (not a llama2.c checkpoint?)");

  const int64_t d = c.hidden_size, hd = c.head_dim, kv = int64_t(c.num_kv_heads) * hd, f = c.intermediate_size;
  const int L = c.num_layers;
  Llama2cCheckpoint out;
  out.weights.description = path;
  Cursor cur(file, offset);
  std::vector<Tensor> wq(L), wk(L), wv(L), wo(L), w1(L), w2(L), w3(L), att_norm(L), ffn_norm(L);
  Tensor emb, final_norm, cls;
  auto take_layers = [&](std::vector<Tensor>& v, const char* what, int64_t rows, int64_t cols) {
    for (int l = 0; l < L; ++l) v[l] = cur.take(layer_name(l, what), rows, cols);
  };
  if (version == 0) {
    emb = cur.take("token_embedding_table", c.vocab_size, d);
    take_layers(att_norm, "rms_att_weight", d, 0);
    take_layers(wq, "wq", d, d);
    take_layers(wk, "wk", kv, d);
    take_layers(wv, "wv", kv, d);
    take_layers(wo, "wo", d, d);
    take_layers(ffn_norm, "rms_ffn_weight", d, 0);
    take_layers(w1, "w1", f, d);
    take_layers(w2, "w2", d, f);
    take_layers(w3, "w3", f, d);
    final_norm = cur.take("rms_final_weight", d, 0);
    cur.take("freq_cis_real", c.max_position_embeddings, hd / 2);
    cur.take("freq_cis_imag", c.max_position_embeddings, hd / 2);
  } else {
    take_layers(att_norm, "attention_norm", d, 0);
    take_layers(ffn_norm, "ffn_norm", d, 0);
    final_norm = cur.take("norm", d, 0);
    emb = cur.take("tok_embeddings", c.vocab_size, d);
    take_layers(wq, "wq", d, d);
    take_layers(wk, "wk", kv, d);
    take_layers(wv, "wv", kv, d);
    take_layers(wo, "wo", d, d);
    take_layers(w1, "w1", f, d);
    take_layers(w2, "w2", d, f);
    take_layers(w3, "w3", f, d);
  }
  if (!shared_classifier) cls = cur.take("wcls", c.vocab_size, d);
  RILL_CHECK(cur.offset() == file->size(),
             path + ": llama2.c checkpoint has " + std::to_string(file->size() - cur.offset()) +
                 " unexpected trailing bytes (header does not match the weights)");

  auto& w = out.weights;
  auto put = [&](const std::string& name, const Tensor& t) {
    w.tensors[name] = t;
    w.source[name] = path;
  };
  auto permuted = [&](const Tensor& t, int heads) {
    auto buf = std::make_shared<std::vector<float>>(size_t(t.numel()));
    permute_interleaved_to_half(t.ptr<float>(), buf->data(), heads, int(hd), t.shape[1]);
    Tensor r = t;
    r.data = buf->data();
    r.storage = buf;
    return r;
  };
  put("model.embed_tokens.weight", emb);
  put("model.norm.weight", final_norm);
  if (!shared_classifier) put("lm_head.weight", cls);
  for (int l = 0; l < L; ++l) {
    put(layer_name(l, "input_layernorm.weight"), att_norm[l]);
    put(layer_name(l, "post_attention_layernorm.weight"), ffn_norm[l]);
    put(layer_name(l, "self_attn.q_proj.weight"), permuted(wq[l], c.num_heads));
    put(layer_name(l, "self_attn.k_proj.weight"), permuted(wk[l], c.num_kv_heads));
    put(layer_name(l, "self_attn.v_proj.weight"), wv[l]);
    put(layer_name(l, "self_attn.o_proj.weight"), wo[l]);
    put(layer_name(l, "mlp.gate_proj.weight"), w1[l]);
    put(layer_name(l, "mlp.down_proj.weight"), w2[l]);
    put(layer_name(l, "mlp.up_proj.weight"), w3[l]);
  }
  out.config = c;
  return out;
}

}  // namespace rill
