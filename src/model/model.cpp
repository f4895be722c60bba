#include "model/model.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/rope.h"

namespace rill {

namespace {

// A view of the first s.numel() elements of a workspace buffer, shaped s.
Tensor view_as(const Tensor& buffer, const Shape& s) {
  RILL_CHECK(s.numel() <= buffer.numel(), "workspace buffer too small");
  Tensor t = buffer;
  t.shape = s;
  return t;
}

std::string layer_name(int l, const std::string& suffix) {
  return "model.layers." + std::to_string(l) + "." + suffix;
}

}  // namespace

Model::Model(const Checkpoint& ck, Backend& backend) : config_(ck.config), backend_(backend) {
  bind(ck);
  backend_.end_upload();
  const std::vector<double> inv_freq = rope_inv_freq(config_, 0);
  attention_factor_ = float(rope_attention_factor(config_));
  inv_freq_dev_ = backend_.alloc(DType::F64, {1, int64_t(inv_freq.size())});
  backend_.write(inv_freq_dev_, inv_freq.data(), inv_freq.size() * sizeof(double));
}

bool Model::recordable() const { return config_.rope.type != RopeType::Dynamic && config_.num_experts == 0; }

void Model::bind(const Checkpoint& ck) {
  const ModelConfig& c = config_;
  const WeightMap& wm = ck.weights;
  const int64_t d = c.hidden_size, hd = c.head_dim, qd = int64_t(c.num_heads) * hd, kvd = int64_t(c.num_kv_heads) * hd;
  std::vector<const void*> counted;
  auto upload = [&](const std::string& name, const Tensor& t, const Shape& expect) {
    RILL_CHECK(t.shape == expect, wm.where(name) + ": tensor '" + name + "' has shape " + t.shape.str() +
                                      ", expected " + expect.str() + " from config");
    RILL_CHECK(t.dtype == DType::F32 || t.dtype == DType::BF16 || t.dtype == DType::F16,
               wm.where(name) + ": tensor '" + name + "' has dtype " + std::string(dtype_name(t.dtype)) +
                   " (weights must be F32, BF16 or F16)");
    if (std::find(counted.begin(), counted.end(), t.data) == counted.end()) {
      counted.push_back(t.data);
      weight_bytes_ += t.nbytes();
    }
    return backend_.upload_weight(t);
  };
  auto need = [&](const std::string& name, const Shape& expect) { return upload(name, wm.get(name), expect); };
  auto maybe = [&](const std::string& name, const Shape& expect, bool required) {
    if (!wm.has(name)) {
      RILL_CHECK(!required, "tensor '" + name + "' missing from " + wm.description + " (config.json asks for it)");
      return Tensor{};
    }
    return upload(name, wm.get(name), expect);
  };

  w_.embed = need("model.embed_tokens.weight", {c.vocab_size, d});
  w_.norm = need("model.norm.weight", {d});
  if (c.tie_word_embeddings && !wm.has("lm_head.weight")) w_.lm_head = w_.embed;
  else w_.lm_head = need("lm_head.weight", {c.vocab_size, d});

  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights L;
    auto name = [&](const std::string& s) { return layer_name(l, s); };
    // A linear layer: weight [out, in] and, where the config has biases, bias [out].
    auto linear = [&](const std::string& base, int64_t out, int64_t in, bool bias, Tensor& w, Tensor& b) {
      w = need(name(base + ".weight"), {out, in});
      b = maybe(name(base + ".bias"), {out}, bias);
    };
    L.input_norm = need(name("input_layernorm.weight"), {d});
    L.post_attention_norm = need(name("post_attention_layernorm.weight"), {d});
    linear("self_attn.q_proj", qd, d, c.attention_bias, L.q, L.q_bias);
    linear("self_attn.k_proj", kvd, d, c.attention_bias, L.k, L.k_bias);
    linear("self_attn.v_proj", kvd, d, c.attention_bias, L.v, L.v_bias);
    linear("self_attn.o_proj", d, qd, c.attention_out_bias, L.o, L.o_bias);
    if (c.qk_norm) {
      L.q_norm = need(name("self_attn.q_norm.weight"), {hd});
      L.k_norm = need(name("self_attn.k_norm.weight"), {hd});
    }
    if (c.layer_is_moe(l)) {
      const int64_t f = c.moe_intermediate_size, E = c.num_experts;
      const bool mixtral = c.arch == Arch::Mixtral;
      const std::string prefix = mixtral ? "block_sparse_moe." : "mlp.";
      L.router = need(name(prefix + "gate.weight"), {E, d});
      for (int e = 0; e < E; ++e) {
        const std::string ex = prefix + "experts." + std::to_string(e) + ".";
        ExpertWeights ew;
        ew.gate = need(name(ex + (mixtral ? "w1" : "gate_proj") + ".weight"), {f, d});
        ew.up = need(name(ex + (mixtral ? "w3" : "up_proj") + ".weight"), {f, d});
        ew.down = need(name(ex + (mixtral ? "w2" : "down_proj") + ".weight"), {d, f});
        L.experts.push_back(ew);
      }
    } else {
      const int64_t f = c.intermediate_size;
      linear("mlp.gate_proj", f, d, c.mlp_bias, L.gate, L.gate_bias);
      linear("mlp.up_proj", f, d, c.mlp_bias, L.up, L.up_bias);
      linear("mlp.down_proj", d, f, c.mlp_bias, L.down, L.down_bias);
    }
    w_.layers.push_back(std::move(L));
  }
}

std::unique_ptr<ModelWorkspace> Model::make_workspace(int64_t n) {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, hd = c.head_dim, H = c.num_heads, KV = c.num_kv_heads;
  auto ws = std::make_unique<ModelWorkspace>();
  ws->capacity = n;
  const int64_t f = std::max(c.intermediate_size, c.moe_intermediate_size);
  // The residual stream is f32 everywhere; the rest is in the backend's activation dtype.
  const DType act = backend_.activation_dtype();
  ws->residual = backend_.alloc(DType::F32, {n, d});
  ws->h = backend_.alloc(act, {n, d});
  ws->q = backend_.alloc(act, {n, H * hd});
  ws->q_sink = backend_.alloc(act, {n, H * hd});
  ws->k = backend_.alloc(act, {n, KV * hd});
  ws->v = backend_.alloc(act, {n, KV * hd});
  ws->attn = backend_.alloc(act, {n, H * hd});
  ws->o = backend_.alloc(act, {n, d});
  ws->gate = backend_.alloc(act, {n, f});
  ws->up = backend_.alloc(act, {n, f});
  ws->mlp = backend_.alloc(act, {n, d});
  if (c.num_experts > 0) {
    ws->router = backend_.alloc(DType::F32, {n, c.num_experts});
    ws->route_ids = backend_.alloc(DType::I32, {n, c.num_experts_per_tok});
    ws->route_w = backend_.alloc(DType::F32, {n, c.num_experts_per_tok});
  }
  return ws;
}

void Model::run_layers(ModelWorkspace& ws, int64_t n, const StepInputs& in, const AttentionBatch& ab,
                       const std::vector<KvLayer>& kv) {
  const ModelConfig& c = config_;
  const int64_t hd = c.head_dim, H = c.num_heads;
  auto rows = [n](const Tensor& t) { return t.slice_rows(0, n); };
  const Tensor residual = rows(ws.residual), h = rows(ws.h), q = rows(ws.q), k = rows(ws.k), v = rows(ws.v);
  const Tensor attn = rows(ws.attn), o = rows(ws.o), mlp = rows(ws.mlp);
  const bool sinks = !ab.sinks.empty();
  const float scale = float(1.0 / std::sqrt(double(hd)));
  backend_.embedding(residual, w_.embed, in.ids);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerWeights& L = w_.layers[size_t(l)];
    // Attention block: pre-norm (fused with the previous block's residual add).
    if (l == 0) backend_.rmsnorm(h, residual, L.input_norm, c.rms_norm_eps);
    else backend_.add_rmsnorm(residual, h, mlp, L.input_norm, c.rms_norm_eps);
    const Backend::LinearOut qkv[] = {{q, L.q, L.q_bias}, {k, L.k, L.k_bias}, {v, L.v, L.v_bias}};
    Tensor q_sink;
    if (!c.qk_norm && !sinks) {  // nothing between the projections and RoPE: one call, which a backend may fuse
      backend_.qkv_rope_kv_write(h, qkv, kv[size_t(l)], in.slots, int(hd), in.positions, in.inv_freq, in.rope_row,
                                 attention_factor_);
    } else {
      backend_.linears(h, qkv, 3);
      if (c.qk_norm) {
        backend_.rmsnorm(q, q, L.q_norm, c.rms_norm_eps);
        backend_.rmsnorm(k, k, L.k_norm, c.rms_norm_eps);
      }
      if (sinks) {
        q_sink = rows(ws.q_sink);
        backend_.gather_rows(q_sink, q, in.identity);  // a copy, before q is rotated
        backend_.rope(q_sink, int(hd), in.sink_positions, in.inv_freq, in.rope_row, attention_factor_);
      }
      backend_.rope_kv_write(q, k, v, kv[size_t(l)], in.slots, int(hd), in.positions, in.inv_freq, in.rope_row,
                             attention_factor_);
    }
    backend_.attention(attn, q, kv[size_t(l)], ab, int(H), scale, c.sliding_window, q_sink);
    backend_.linear(o, attn, L.o, L.o_bias);
    // Feed-forward block.
    backend_.add_rmsnorm(residual, h, o, L.post_attention_norm, c.rms_norm_eps);
    if (!L.experts.empty()) {
      const Tensor router = rows(ws.router), route_ids = rows(ws.route_ids), route_w = rows(ws.route_w);
      backend_.linear(router, h, L.router, Tensor{});
      backend_.moe_route(route_ids, route_w, router, c.num_experts_per_tok, c.norm_topk_prob);
      backend_.moe_experts(mlp, h, route_ids, route_w, L.experts);
    } else {
      const Tensor gate = view_as(ws.gate, {n, c.intermediate_size});
      const Tensor up = view_as(ws.up, {n, c.intermediate_size});
      backend_.swiglu(gate, h, L.gate, L.gate_bias, L.up, L.up_bias, gate, up);
      backend_.linear(mlp, gate, L.down, L.down_bias);
    }
  }
  backend_.add_rmsnorm(residual, h, mlp, w_.norm, c.rms_norm_eps);
}

void Model::limit_vocab(int n) {
  RILL_CHECK(n > 0 && n <= config_.vocab_size, "limit_vocab: " + std::to_string(n) + " is not in [1, " +
                                                   std::to_string(config_.vocab_size) + "]");
  config_.vocab_size = n;
  w_.lm_head = w_.lm_head.slice_rows(0, n);  // a view: the first n rows (of the embedding itself, when tied)
}

void Model::lm_head(const Tensor& logits, const Tensor& hidden) { backend_.linear(logits, hidden, w_.lm_head, Tensor{}); }

}  // namespace rill
