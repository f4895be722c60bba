#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/hf_config.h"
#include "formats/json_file.h"
#include "formats/llama2c.h"
#include "model/rope.h"

namespace rill {
namespace fs = std::filesystem;

namespace {

// generation_config.json may list more end-of-sequence ids than config.json (Llama 3 does).
void merge_generation_config(const fs::path& dir, ModelConfig* c) {
  const fs::path p = dir / "generation_config.json";
  if (!fs::exists(p)) return;
  const nlohmann::json j = read_json_file(p.string());
  if (!j.is_object()) return;
  auto add = [&](const nlohmann::json& v) {
    if (v.is_number_integer() &&
        std::find(c->eos_token_ids.begin(), c->eos_token_ids.end(), v.get<int>()) == c->eos_token_ids.end())
      c->eos_token_ids.push_back(v.get<int>());
  };
  if (j.contains("eos_token_id")) {
    if (j["eos_token_id"].is_array())
      for (const auto& v : j["eos_token_id"]) add(v);
    else
      add(j["eos_token_id"]);
  }
  if (c->bos_token_id < 0 && j.contains("bos_token_id") && j["bos_token_id"].is_number_integer())
    c->bos_token_id = j["bos_token_id"].get<int>();
}

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

Checkpoint read_checkpoint(const std::string& path) {
  Checkpoint ck;
  ck.path = path;
  RILL_CHECK(fs::exists(path), path + ": no such file or directory");
  if (fs::is_regular_file(path)) {
    RILL_CHECK(fs::path(path).extension() == ".bin",
               path + ": expected a model directory (config.json + *.safetensors) or a llama2.c .bin file");
    auto l2c = read_llama2c(path);
    ck.config = std::move(l2c.config);
    ck.weights = std::move(l2c.weights);
    return ck;
  }
  const fs::path config = fs::path(path) / "config.json";
  RILL_CHECK(fs::exists(config), path + ": no config.json in the model directory");
  ck.config = read_hf_config(config.string());
  merge_generation_config(path, &ck.config);
  ck.weights = read_safetensors_dir(path);
  return ck;
}

struct Model::Workspace {
  int64_t capacity = 0;
  Tensor residual, h, q, q_sink, k, v, attn, o, gate, up, mlp, router, route_ids, route_w;
};

// Recorded decode steps (see forward_graph): a graph per (batch bucket, block-table stride), and the fixed
// buffers they read and write. Graphs hold the buffers' addresses, so buffers only change by dropping them all.
struct Model::GraphState {
  int capacity = 0;          // rows the buffers hold (a batch bucket)
  int max_blocks = 0;        // the widest block-table stride the metadata buffer holds
  size_t scratch_bytes = 0;  // attention scratch
  uint64_t kv_id = 0;  // the KV cache the graphs write to (KvCache::id)
  std::shared_ptr<Workspace> ws;
  Tensor meta;  // i32: ids, positions, slots, q_start, ctx_len, token_seq, block tables
  Tensor logits, ids_out, scratch;
  std::vector<int32_t> host_meta;
  std::map<std::pair<int, int>, std::unique_ptr<Graph>> graphs;
  std::set<std::pair<int, int>> ran_once;  // keys run eagerly once (plans made, kernels loaded) before recording
};

Model::Model(const Checkpoint& ck, Backend& backend) : config_(ck.config), backend_(backend) {
  const char* graphs = std::getenv("RILL_CUDA_GRAPHS");
  if (graphs && std::string(graphs) == "0") graph_max_batch_ = 0;
  bind(ck);
  inv_freq_ = rope_inv_freq(config_, 0);
  attention_factor_ = float(rope_attention_factor(config_));
  inv_freq_dev_ = backend_.alloc(DType::F64, {1, int64_t(inv_freq_.size())});
  backend_.write(inv_freq_dev_, inv_freq_.data(), inv_freq_.size() * sizeof(double));
}

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
    auto name = [&](const char* s) { return layer_name(l, s); };
    L.input_norm = need(name("input_layernorm.weight"), {d});
    L.post_attention_norm = need(name("post_attention_layernorm.weight"), {d});
    L.q = need(name("self_attn.q_proj.weight"), {qd, d});
    L.k = need(name("self_attn.k_proj.weight"), {kvd, d});
    L.v = need(name("self_attn.v_proj.weight"), {kvd, d});
    L.o = need(name("self_attn.o_proj.weight"), {d, qd});
    L.q_bias = maybe(name("self_attn.q_proj.bias"), {qd}, c.attention_bias);
    L.k_bias = maybe(name("self_attn.k_proj.bias"), {kvd}, c.attention_bias);
    L.v_bias = maybe(name("self_attn.v_proj.bias"), {kvd}, c.attention_bias);
    L.o_bias = maybe(name("self_attn.o_proj.bias"), {d}, c.attention_out_bias);
    if (c.qk_norm) {
      L.q_norm = need(name("self_attn.q_norm.weight"), {hd});
      L.k_norm = need(name("self_attn.k_norm.weight"), {hd});
    }
    if (c.layer_is_moe(l)) {
      const int64_t f = c.moe_intermediate_size, E = c.num_experts;
      const bool mixtral = c.arch == Arch::Mixtral;
      const std::string prefix = mixtral ? "block_sparse_moe." : "mlp.";
      L.router = need(layer_name(l, prefix + "gate.weight"), {E, d});
      for (int e = 0; e < E; ++e) {
        const std::string ex = prefix + "experts." + std::to_string(e) + ".";
        ExpertWeights ew;
        ew.gate = need(layer_name(l, ex + (mixtral ? "w1" : "gate_proj") + ".weight"), {f, d});
        ew.up = need(layer_name(l, ex + (mixtral ? "w3" : "up_proj") + ".weight"), {f, d});
        ew.down = need(layer_name(l, ex + (mixtral ? "w2" : "down_proj") + ".weight"), {d, f});
        L.experts.push_back(ew);
      }
    } else {
      const int64_t f = c.intermediate_size;
      L.gate = need(name("mlp.gate_proj.weight"), {f, d});
      L.up = need(name("mlp.up_proj.weight"), {f, d});
      L.down = need(name("mlp.down_proj.weight"), {d, f});
      L.gate_bias = maybe(name("mlp.gate_proj.bias"), {f}, c.mlp_bias);
      L.up_bias = maybe(name("mlp.up_proj.bias"), {f}, c.mlp_bias);
      L.down_bias = maybe(name("mlp.down_proj.bias"), {d}, c.mlp_bias);
    }
    w_.layers.push_back(std::move(L));
  }
}

Model::~Model() = default;

std::shared_ptr<Model::Workspace> Model::make_workspace(int64_t n) {
  const ModelConfig& c = config_;
  const int64_t d = c.hidden_size, hd = c.head_dim, H = c.num_heads, KV = c.num_kv_heads;
  auto ws = std::make_shared<Workspace>();
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

Tensor Model::upload_i32(const std::vector<int32_t>& v) {
  Tensor t = backend_.alloc(DType::I32, {std::max<int64_t>(1, int64_t(v.size()))});
  if (!v.empty()) backend_.write(t, v.data(), v.size() * sizeof(int32_t));
  return t.slice_rows(0, int64_t(v.size()));
}

void Model::pick(const Tensor& ids_dev, const Tensor& logits, DeviceSampling* sampling, bool argmax_done) {
  const int64_t m = logits.rows();
  const bool sample = sampling && !sampling->rows.empty();
  const int k = sampling ? sampling->logprobs : -1;
  if (!sample) {
    if (!argmax_done) backend_.argmax_rows(ids_dev, logits);
  } else {
    RILL_CHECK(int64_t(sampling->rows.size()) == m, "forward: " + std::to_string(sampling->rows.size()) +
                                                       " sampling rows for " + std::to_string(m) + " logits rows");
  }
  // The log-probabilities are of the model's logits: when penalties will change the rows, of a copy.
  Tensor lp_logits = logits;
  if (k >= 0 && sample && !sampling->penalties.empty()) {
    std::vector<int32_t> all(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) all[size_t(i)] = int32_t(i);
    lp_logits = backend_.alloc(DType::F32, {m, logits.row_size()});
    backend_.gather_rows(lp_logits, logits, upload_i32(all));
  }
  if (sample) {
    const Tensor rows = backend_.alloc(DType::U8, {m * int64_t(sizeof(SampleRow))});
    backend_.write(rows, sampling->rows.data(), rows.nbytes());
    Tensor pen;
    if (!sampling->penalties.empty()) {
      pen = backend_.alloc(DType::I32, {2 * int64_t(sampling->penalties.size())});
      backend_.write(pen, sampling->penalties.data(), pen.nbytes());
    }
    backend_.sample_rows(ids_dev, logits, rows, pen);
  }
  if (k >= 0) {
    RILL_CHECK(k <= kMaxTopLogprobs, "forward: at most " + std::to_string(kMaxTopLogprobs) + " top logprobs");
    const Tensor out = backend_.alloc(DType::F32, {m, 1 + 2 * int64_t(k)});
    backend_.top_logprobs(out, lp_logits, ids_dev, k);
    sampling->logprobs_out.resize(size_t(out.numel()));
    backend_.read(sampling->logprobs_out.data(), out, out.nbytes());
  }
}

void Model::forward(const Batch& batch, KvCache& kv, std::vector<float>* logits, std::vector<int32_t>* ids,
                    DeviceSampling* sampling) {
  const ModelConfig& c = config_;
  const int64_t n = batch.num_tokens(), d = c.hidden_size, hd = c.head_dim;
  RILL_CHECK(n > 0, "forward: empty batch");
  for (int32_t id : batch.tokens)
    RILL_CHECK(id >= 0 && id < c.vocab_size, "token id " + std::to_string(id) + " is outside the vocabulary (" +
                                                 std::to_string(c.vocab_size) + " tokens)");
  if (forward_graph(batch, kv, logits, ids, sampling)) return;

  // Workspace: grown to the largest batch seen, never shrunk.
  if (!ws_ || ws_->capacity < n) ws_ = make_workspace(n);
  Workspace& ws = *ws_;

  // Batch metadata to the device.
  AttentionBatch ab;
  ab.num_seqs = batch.num_seqs();
  ab.num_tokens = int(n);
  for (const auto& t : batch.block_tables) ab.max_blocks_per_seq = std::max(ab.max_blocks_per_seq, int(t.size()));
  for (int s = 0; s < ab.num_seqs; ++s) {
    ab.host_q_len.push_back(batch.q_start[size_t(s) + 1] - batch.q_start[size_t(s)]);
    ab.max_q_len = std::max(ab.max_q_len, ab.host_q_len.back());
    ab.max_ctx_len = std::max(ab.max_ctx_len, batch.ctx_len[size_t(s)]);
  }
  std::vector<int32_t> tables(size_t(ab.num_seqs) * size_t(std::max(1, ab.max_blocks_per_seq)), 0);
  std::vector<int32_t> token_seq(static_cast<size_t>(n));
  for (int s = 0; s < ab.num_seqs; ++s) {
    std::copy(batch.block_tables[size_t(s)].begin(), batch.block_tables[size_t(s)].end(),
              tables.begin() + int64_t(s) * ab.max_blocks_per_seq);
    for (int t = batch.q_start[size_t(s)]; t < batch.q_start[size_t(s) + 1]; ++t) token_seq[size_t(t)] = s;
  }
  StepInputs in;
  in.ids = upload_i32(batch.tokens);
  in.positions = upload_i32(batch.positions);
  in.slots = upload_i32(batch.slots);
  ab.q_start = upload_i32(batch.q_start);
  ab.ctx_len = upload_i32(batch.ctx_len);
  ab.block_tables = upload_i32(tables);
  ab.token_seq = upload_i32(token_seq);
  // Rolling KV: queries are also rotated at their cache positions, to score the attention sinks.
  if (batch.any_rolling()) {
    ab.sinks = upload_i32(batch.sinks);
    ab.host_sinks = batch.sinks;
    ab.hole_end = upload_i32(batch.hole_end);
    in.sink_positions = upload_i32(batch.sink_positions);
    std::vector<int32_t> rows_id(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) rows_id[size_t(i)] = int32_t(i);
    in.identity = upload_i32(rows_id);
  }

  // RoPE frequencies: fixed, except dynamic NTK scaling, which depends on each sequence's length.
  in.inv_freq = inv_freq_dev_;
  if (c.rope.type == RopeType::Dynamic) {
    const int64_t half = hd / 2;
    std::vector<double> rows_f(size_t(ab.num_seqs * half));
    for (int s = 0; s < ab.num_seqs; ++s) {
      int max_pos = 0;
      for (int t = batch.q_start[size_t(s)]; t < batch.q_start[size_t(s) + 1]; ++t)
        max_pos = std::max(max_pos, batch.positions[size_t(t)]);
      const auto f = rope_inv_freq(c, max_pos + 1);
      std::copy(f.begin(), f.end(), rows_f.begin() + s * half);
    }
    in.inv_freq = backend_.alloc(DType::F64, {ab.num_seqs, half});
    backend_.write(in.inv_freq, rows_f.data(), rows_f.size() * sizeof(double));
    in.rope_row = ab.token_seq;
  }
  run_layers(ws, n, in, ab, kv);

  // Logits only for the rows the caller asked for.
  const Tensor h = ws.h.slice_rows(0, n);
  const int64_t m = int64_t(batch.logit_rows.size());
  logits->resize(ids ? 0 : size_t(m * c.vocab_size));
  if (ids) ids->resize(size_t(m));
  if (m == 0) return;
  const Tensor sel = backend_.alloc(h.dtype, {m, d});
  backend_.gather_rows(sel, h, upload_i32(batch.logit_rows));
  const Tensor out = backend_.alloc(DType::F32, {m, c.vocab_size});
  backend_.linear(out, sel, w_.lm_head, Tensor{});
  if (ids) {
    const Tensor ids_out = backend_.alloc(DType::I32, {m});
    pick(ids_out, out, sampling);
    backend_.read(ids->data(), ids_out, size_t(m) * sizeof(int32_t));
    return;
  }
  backend_.read(logits->data(), out, out.nbytes());
}

void Model::run_layers(Workspace& ws, int64_t n, const StepInputs& in, const AttentionBatch& ab, KvCache& kv) {
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
      backend_.qkv_rope_kv_write(h, qkv, kv.layer(l), in.slots, int(hd), in.positions, in.inv_freq, in.rope_row,
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
      backend_.rope_kv_write(q, k, v, kv.layer(l), in.slots, int(hd), in.positions, in.inv_freq, in.rope_row,
                             attention_factor_);
    }
    backend_.attention(attn, q, kv.layer(l), ab, int(H), scale, c.sliding_window, q_sink);
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

namespace {

// Decode batches are padded up to one of these sizes, so that few graphs cover every batch.
int graph_bucket(int n) {
  static constexpr int kBuckets[] = {1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256};
  for (int b : kBuckets)
    if (n <= b) return b;
  return 0;
}

int pow2_at_least(int n, int lo) {
  int p = lo;
  while (p < n) p *= 2;
  return p;
}

}  // namespace

// A decode step (one new token per sequence, logits for each) replays a graph recorded for its batch bucket
// and block-table stride: the inputs go to the device in one copy, then one launch runs every layer, the
// logits and the argmax. Padding rows decode token 0 for a sequence of one cached entry (block 0) and
// write no KV (slot -1); their outputs are never read. Steps a graph cannot replay exactly return false:
// prompts, rolling KV (host-sized sink kernels), dynamic RoPE (per-step frequencies), MoE (routing read
// back), and attention shapes whose kernel grid depends on the context length (the split kernel).
bool Model::forward_graph(const Batch& batch, KvCache& kv, std::vector<float>* logits, std::vector<int32_t>* ids,
                          DeviceSampling* sampling) {
  const ModelConfig& c = config_;
  const int n = batch.num_tokens();
  if (graph_max_batch_ <= 0 || n > graph_max_batch_ || batch.num_seqs() != n || batch.any_rolling()) return false;
  if (c.rope.type == RopeType::Dynamic || c.num_experts > 0) return false;
  if ((c.head_dim != 64 && c.head_dim != 128) || c.num_heads / c.num_kv_heads > 16) return false;
  if (int(batch.logit_rows.size()) != n) return false;
  for (int i = 0; i < n; ++i)
    if (batch.logit_rows[size_t(i)] != i || batch.q_start[size_t(i) + 1] != i + 1) return false;
  const int nb = graph_bucket(n);
  if (nb == 0) return false;
  int widest = 1;
  for (const auto& t : batch.block_tables) widest = std::max(widest, int(t.size()));
  const int B = pow2_at_least(widest, 8);
  if (!backend_.can_record()) return false;

  // The buffers, (re)made when this step needs more than they hold; graphs that point at old ones go.
  AttentionBatch probe;
  probe.num_seqs = probe.num_tokens = nb;
  probe.max_q_len = 1;
  probe.max_ctx_len = B * kv.block_size();
  probe.max_blocks_per_seq = B;
  probe.host_q_len.assign(size_t(nb), 1);
  const size_t scratch = backend_.attention_workspace(kv.layer(0), probe, c.num_heads, c.sliding_window);
  const uint64_t kv_id = kv.id();
  if (!graphs_ || graphs_->capacity < nb || graphs_->max_blocks < B || graphs_->scratch_bytes < scratch ||
      graphs_->kv_id != kv_id) {
    auto g = std::make_unique<GraphState>();
    const GraphState* old = graphs_.get();
    g->capacity = std::max(nb, old && old->kv_id == kv_id ? old->capacity : 0);
    g->max_blocks = std::max(B, old && old->kv_id == kv_id ? old->max_blocks : 0);
    graphs_.reset();  // graphs first: they hold the old buffers' addresses
    g->scratch_bytes = std::max(scratch, size_t(1));
    g->kv_id = kv_id;
    g->ws = make_workspace(g->capacity);
    g->meta = backend_.alloc(DType::I32, {int64_t(g->capacity) * (7 + g->max_blocks) + 1});
    g->logits = backend_.alloc(DType::F32, {g->capacity, c.vocab_size});
    g->ids_out = backend_.alloc(DType::I32, {g->capacity});
    g->scratch = backend_.alloc(DType::U8, {int64_t(g->scratch_bytes)});
    graphs_ = std::move(g);
  }
  GraphState& g = *graphs_;

  // Inputs, laid out as the graph for (nb, B) reads them.
  const int64_t o_pos = nb, o_slot = 2 * nb, o_qs = 3 * nb, o_ctx = 4 * nb + 1, o_seq = 5 * nb + 1,
                o_tab = 6 * nb + 1, total = o_tab + int64_t(nb) * B;
  std::vector<int32_t>& h = g.host_meta;
  h.assign(size_t(total), 0);
  for (int i = 0; i < nb; ++i) {
    const bool real = i < n;
    h[size_t(i)] = real ? batch.tokens[size_t(i)] : 0;
    h[size_t(o_pos + i)] = real ? batch.positions[size_t(i)] : 0;
    h[size_t(o_slot + i)] = real ? batch.slots[size_t(i)] : -1;
    h[size_t(o_qs + i)] = i;
    h[size_t(o_ctx + i)] = real ? batch.ctx_len[size_t(i)] : 1;
    h[size_t(o_seq + i)] = i;
    if (real) std::copy(batch.block_tables[size_t(i)].begin(), batch.block_tables[size_t(i)].end(),
                        h.begin() + o_tab + int64_t(i) * B);
  }
  h[size_t(o_qs + nb)] = nb;
  backend_.write(g.meta, h.data(), size_t(total) * sizeof(int32_t));

  auto record = [&, nb, B]() {
    auto part = [&](int64_t off, int64_t count) { return g.meta.slice_rows(off, count); };
    StepInputs in;
    in.ids = part(0, nb);
    in.positions = part(o_pos, nb);
    in.slots = part(o_slot, nb);
    in.inv_freq = inv_freq_dev_;
    AttentionBatch ab;
    ab.num_seqs = ab.num_tokens = nb;
    ab.max_blocks_per_seq = B;
    ab.max_q_len = 1;
    ab.max_ctx_len = B * kv.block_size();
    ab.host_q_len.assign(size_t(nb), 1);
    ab.q_start = part(o_qs, nb + 1);
    ab.ctx_len = part(o_ctx, nb);
    ab.token_seq = part(o_seq, nb);
    ab.block_tables = part(o_tab, int64_t(nb) * B);
    ab.workspace = g.scratch;
    run_layers(*g.ws, nb, in, ab, kv);
    const Tensor out = g.logits.slice_rows(0, nb);
    backend_.linear(out, g.ws->h.slice_rows(0, nb), w_.lm_head, Tensor{});
    backend_.argmax_rows(g.ids_out.slice_rows(0, nb), out);
  };
  const auto key = std::make_pair(nb, B);
  auto it = g.graphs.find(key);
  if (it != g.graphs.end()) {
    it->second->replay();
    ++graph_replays_;
  } else if (g.ran_once.insert(key).second) {
    record();  // the first step of a shape runs as it is: GEMM plans and kernels are set up outside a recording
  } else {
    RILL_CHECK(backend_.begin_capture(), "forward: the backend cannot record graphs");
    try {
      record();
    } catch (...) {
      try {
        backend_.end_capture();
      } catch (...) {
      }
      throw;
    }
    auto graph = backend_.end_capture();
    graph->replay();
    ++graph_replays_;
    g.graphs.emplace(key, std::move(graph));
  }

  if (ids) {
    // The graph took the argmax; other sampling (and log-probabilities) run after it, on the graph's logits.
    if (sampling) pick(g.ids_out.slice_rows(0, n), g.logits.slice_rows(0, n), sampling, true);
    logits->clear();
    ids->resize(size_t(n));
    backend_.read(ids->data(), g.ids_out, size_t(n) * sizeof(int32_t));
  } else {
    logits->resize(size_t(n) * size_t(c.vocab_size));
    backend_.read(logits->data(), g.logits, logits->size() * sizeof(float));
  }
  return true;
}

}  // namespace rill
