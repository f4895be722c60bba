#include "engine/model_runner.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <tuple>
#include <set>
#include <string>

#include "core/error.h"
#include "model/rope.h"

namespace rill {

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

// Recorded steps (see step_graph): a graph per (batch bucket, block-table stride, tokens per sequence), and the
// fixed buffers they read and write. Graphs hold the buffers' addresses, so buffers only change by dropping
// them all.
struct ModelRunner::GraphState {
  int seqs = 0;              // sequences the buffers hold (a batch bucket)
  int tokens = 0;            // tokens (and logit rows) they hold
  int max_blocks = 0;        // the widest block-table stride the metadata buffer holds
  size_t scratch_bytes = 0;  // attention scratch
  uint64_t kv_id = 0;        // the KV cache the graphs write to (KvCache::id)
  std::unique_ptr<ModelWorkspace> ws;
  Tensor meta;  // i32: ids, positions, slots, q_start, ctx_len, token_seq, block tables
  Tensor logits, ids_out, scratch;
  std::vector<int32_t> host_meta;
  std::map<std::tuple<int, int, int>, std::unique_ptr<Graph>> graphs;
  std::set<std::tuple<int, int, int>> ran_once;  // keys run eagerly once (plans made, kernels loaded) before recording
};

ModelRunner::ModelRunner(Model& model) : model_(model), backend_(model.backend()) {
  const char* graphs = std::getenv("RILL_CUDA_GRAPHS");
  if (graphs && std::string(graphs) == "0") graph_max_batch_ = 0;
}

ModelRunner::~ModelRunner() = default;

StepOutput ModelRunner::run(const Batch& batch, KvCache& kv, const RowSampling& sampling) {
  StepOutput out;
  const bool plain = sampling.rows.empty() && sampling.logprobs < 0 && !sampling.fill_masks;
  step(batch, kv, nullptr, &out, plain ? nullptr : &sampling);
  return out;
}

std::vector<float> ModelRunner::logits(const Batch& batch, KvCache& kv) {
  std::vector<float> out;
  step(batch, kv, &out, nullptr, nullptr);
  return out;
}

Tensor ModelRunner::upload_i32(const std::vector<int32_t>& v) {
  Tensor t = backend_.alloc(DType::I32, {std::max<int64_t>(1, int64_t(v.size()))});
  if (!v.empty()) backend_.write(t, v.data(), v.size() * sizeof(int32_t));
  return t.slice_rows(0, int64_t(v.size()));
}

void ModelRunner::pick(const Tensor& ids_dev, const Tensor& logits, const RowSampling* sampling, StepOutput* out,
                       bool argmax_done) {
  const int64_t m = logits.rows();
  const bool sample = sampling && !sampling->rows.empty();
  const int k = sampling ? sampling->logprobs : -1;
  const bool masked = sampling && sampling->fill_masks;
  if (sample)
    RILL_CHECK(int64_t(sampling->rows.size()) == m, "ModelRunner: " + std::to_string(sampling->rows.size()) +
                                                       " sampling rows for " + std::to_string(m) + " logits rows");
  // The log-probabilities are of the model's logits: when a mask or penalties will change the rows, of a copy.
  Tensor lp_logits = logits;
  if (k >= 0 && (masked || (sample && !sampling->penalties.empty()))) {
    std::vector<int32_t> all(static_cast<size_t>(m));
    for (int64_t i = 0; i < m; ++i) all[size_t(i)] = int32_t(i);
    lp_logits = backend_.alloc(DType::F32, {m, logits.row_size()});
    backend_.gather_rows(lp_logits, logits, upload_i32(all));
  }
  if (masked) {
    std::vector<uint32_t> masks(size_t(m) * size_t(sampling->mask_words));
    sampling->fill_masks(masks.data());  // the device is still running the step
    const Tensor mask = backend_.alloc(DType::I32, {int64_t(masks.size())});
    backend_.write(mask, masks.data(), masks.size() * sizeof(uint32_t));
    backend_.mask_logits(logits, mask);
    argmax_done = false;
  }
  if (!sample) {
    if (!argmax_done) backend_.argmax_rows(ids_dev, logits);
  } else {
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
    RILL_CHECK(k <= kMaxTopLogprobs, "ModelRunner: at most " + std::to_string(kMaxTopLogprobs) + " top logprobs");
    const Tensor lp = backend_.alloc(DType::F32, {m, 1 + 2 * int64_t(k)});
    backend_.top_logprobs(lp, lp_logits, ids_dev, k);
    out->logprobs.resize(size_t(lp.numel()));
    backend_.read(out->logprobs.data(), lp, lp.nbytes());
  }
}

void ModelRunner::step(const Batch& batch, KvCache& kv, std::vector<float>* logits, StepOutput* ids,
                       const RowSampling* sampling) {
  const ModelConfig& c = model_.config();
  const int64_t n = batch.num_tokens(), d = c.hidden_size, hd = c.head_dim;
  RILL_CHECK(n > 0, "ModelRunner: empty batch");
  for (int32_t id : batch.tokens)
    RILL_CHECK(id >= 0 && id < c.vocab_size, "token id " + std::to_string(id) + " is outside the vocabulary (" +
                                                 std::to_string(c.vocab_size) + " tokens)");
  if (step_graph(batch, kv, logits, ids, sampling)) return;

  if (!ws_ || ws_->capacity < n) ws_ = model_.make_workspace(n);

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
  // Sink window: queries are also rotated at their cache positions, to score the attention sinks.
  if (batch.sink_window) {
    ab.sinks = upload_i32(batch.sinks);
    ab.host_sinks = batch.sinks;
    ab.hole_end = upload_i32(batch.hole_end);
    in.sink_positions = upload_i32(batch.sink_positions);
    std::vector<int32_t> rows_id(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) rows_id[size_t(i)] = int32_t(i);
    in.identity = upload_i32(rows_id);
  }

  // RoPE frequencies: fixed, except dynamic NTK scaling, which depends on each sequence's length.
  in.inv_freq = model_.inv_freq();
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
  model_.run_layers(*ws_, n, in, ab, kv.layers());

  // Logits only for the rows the caller asked for.
  const Tensor h = ws_->h.slice_rows(0, n);
  const int64_t m = int64_t(batch.logit_rows.size());
  if (logits) logits->resize(size_t(m * c.vocab_size));
  if (ids) ids->ids.resize(size_t(m));
  if (m == 0) return;
  const Tensor sel = backend_.alloc(h.dtype, {m, d});
  backend_.gather_rows(sel, h, upload_i32(batch.logit_rows));
  const Tensor out = backend_.alloc(DType::F32, {m, c.vocab_size});
  model_.lm_head(out, sel);
  if (ids) {
    const Tensor ids_out = backend_.alloc(DType::I32, {m});
    pick(ids_out, out, sampling, ids);
    backend_.read(ids->ids.data(), ids_out, size_t(m) * sizeof(int32_t));
    return;
  }
  backend_.read(logits->data(), out, out.nbytes());
}

size_t ModelRunner::graph_scratch(KvCache& kv, int seqs, int blocks, int per_seq) {
  const ModelConfig& c = model_.config();
  AttentionBatch probe;
  probe.num_seqs = seqs;
  probe.num_tokens = seqs * per_seq;
  probe.max_q_len = per_seq;
  probe.max_ctx_len = blocks * kv.block_size();
  probe.max_blocks_per_seq = blocks;
  probe.host_q_len.assign(size_t(seqs), per_seq);
  return backend_.attention_workspace(kv.layer(0), probe, c.num_heads, c.sliding_window);
}

void ModelRunner::recorded_step(GraphState& g, KvCache& kv, const StepInputs& in, const GraphStep& st,
                                const Tensor& argmax_to) {
  auto part = [&](int64_t off, int64_t count) { return g.meta.slice_rows(off, count); };
  const int rows = st.seqs * st.per_seq;
  AttentionBatch ab;
  ab.num_seqs = st.seqs;
  ab.num_tokens = rows;
  ab.max_blocks_per_seq = st.blocks;
  ab.max_q_len = st.per_seq;
  ab.max_ctx_len = st.blocks * kv.block_size();
  ab.host_q_len.assign(size_t(st.seqs), st.per_seq);
  ab.q_start = part(st.q_start, st.seqs + 1);
  ab.ctx_len = part(st.ctx_len, st.seqs);
  ab.token_seq = part(st.token_seq, rows);
  ab.block_tables = part(st.tables, int64_t(st.seqs) * st.blocks);
  ab.workspace = g.scratch;
  model_.run_layers(*g.ws, rows, in, ab, kv.layers());
  const Tensor lg = g.logits.slice_rows(0, rows);
  model_.lm_head(lg, g.ws->h.slice_rows(0, rows));
  backend_.argmax_rows(argmax_to, lg);
}

void ModelRunner::replay_or_record(GraphState& g, const std::tuple<int, int, int>& key,
                                   const std::function<void()>& record) {
  auto it = g.graphs.find(key);
  if (it != g.graphs.end()) {
    it->second->replay();
    ++graph_replays_;
  } else if (g.ran_once.insert(key).second) {
    record();  // the first step of a shape runs as it is: GEMM plans and kernels are set up outside a recording
  } else {
    RILL_CHECK(backend_.begin_capture(), "ModelRunner: the backend cannot record graphs");
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
}

int ModelRunner::graph_q(const Batch& batch) const {
  const ModelConfig& c = model_.config();
  const int n = batch.num_tokens(), seqs = batch.num_seqs();
  if (graph_max_batch_ <= 0 || seqs > graph_max_batch_ || batch.sink_window || seqs == 0 || n % seqs) return 0;
  if (!model_.recordable() || !backend_.can_record() || graph_bucket(seqs) == 0) return 0;
  const int q = n / seqs, group = c.num_heads / c.num_kv_heads;
  if ((c.head_dim != 64 && c.head_dim != 128) || q * group > 16) return 0;
  if (int(batch.logit_rows.size()) != n) return 0;
  for (int i = 0; i < n; ++i)
    if (batch.logit_rows[size_t(i)] != i) return 0;
  for (int i = 0; i < seqs; ++i)
    if (batch.q_start[size_t(i) + 1] != (i + 1) * q) return 0;
  return q;
}

// A decode step (one new token per sequence, logits for each), or a step verifying speculative tokens (q new
// tokens for every sequence, logits for each), replays a graph recorded for its batch bucket, block-table
// stride and q: the inputs go to the device in one copy, then one launch runs every layer, the logits and the
// argmax. Padding sequences run q tokens of token 0 for a sequence of q cached entries (block 0) and write no
// KV (slot -1); their outputs are never read. Steps a graph cannot replay exactly return false: prompts, sink
// windows (host-sized sink kernels), models that are not Model::recordable(), and attention shapes whose kernel
// grid depends on the context length (the split kernel: head sizes other than 64 and 128, and q x the query
// heads per KV head beyond the decode kernel's 16-row tile).
bool ModelRunner::step_graph(const Batch& batch, KvCache& kv, std::vector<float>* logits, StepOutput* ids,
                             const RowSampling* sampling) {
  const ModelConfig& c = model_.config();
  const int n = batch.num_tokens(), seqs = batch.num_seqs();
  const int q = graph_q(batch), group = c.num_heads / c.num_kv_heads;
  if (q == 0) return false;
  const int nb = graph_bucket(seqs);
  int widest = 1;
  for (const auto& t : batch.block_tables) widest = std::max(widest, int(t.size()));
  const int B = pow2_at_least(widest, 8);

  // The buffers, (re)made when this step needs more than they hold; graphs that point at old ones go.
  auto scratch_for = [&](int ns, int blocks, int per_seq) { return graph_scratch(kv, ns, blocks, per_seq); };
  const size_t scratch = scratch_for(nb, B, q);
  const uint64_t kv_id = kv.id();
  if (!graphs_ || graphs_->seqs < nb || graphs_->tokens < nb * q || graphs_->max_blocks < B ||
      graphs_->scratch_bytes < scratch || graphs_->kv_id != kv_id) {
    auto g = std::make_unique<GraphState>();
    const GraphState* old = graphs_.get();
    const bool same_kv = old && old->kv_id == kv_id;
    g->seqs = std::max({nb, graph_reserve_batch_, same_kv ? old->seqs : 0});
    g->tokens = std::max({nb * q, graph_reserve_batch_ * graph_max_q_, same_kv ? old->tokens : 0});
    g->max_blocks = std::max({B, graph_reserve_blocks_, same_kv ? old->max_blocks : 0});
    graphs_.reset();  // graphs first: they hold the old buffers' addresses
    g->scratch_bytes = std::max(scratch, size_t(1));
    for (int per_seq = 1; per_seq * group <= 16 && per_seq <= std::max(q, graph_max_q_); ++per_seq)
      g->scratch_bytes = std::max(g->scratch_bytes, scratch_for(g->seqs, g->max_blocks, per_seq));
    g->kv_id = kv_id;
    g->ws = model_.make_workspace(g->tokens);
    g->meta = backend_.alloc(DType::I32, {int64_t(g->tokens) * 4 + int64_t(g->seqs) * (2 + g->max_blocks) + 1});
    g->logits = backend_.alloc(DType::F32, {g->tokens, c.vocab_size});
    g->ids_out = backend_.alloc(DType::I32, {g->tokens});
    g->scratch = backend_.alloc(DType::U8, {int64_t(g->scratch_bytes)});
    graphs_ = std::move(g);
  }
  GraphState& g = *graphs_;

  // Inputs, laid out as the graph for (nb, B, q) reads them.
  const int rows = nb * q;
  const int64_t o_pos = rows, o_slot = 2 * rows, o_seq = 3 * rows, o_qs = 4 * rows, o_ctx = o_qs + nb + 1,
                o_tab = o_ctx + nb, total = o_tab + int64_t(nb) * B;
  std::vector<int32_t>& h = g.host_meta;
  h.assign(size_t(total), 0);
  for (int i = 0; i < rows; ++i) {
    const bool real = i < n;
    h[size_t(i)] = real ? batch.tokens[size_t(i)] : 0;
    h[size_t(o_pos + i)] = real ? batch.positions[size_t(i)] : i % q;
    h[size_t(o_slot + i)] = real ? batch.slots[size_t(i)] : -1;
    h[size_t(o_seq + i)] = i / q;
  }
  for (int s = 0; s < nb; ++s) {
    const bool real = s < seqs;
    h[size_t(o_qs + s)] = s * q;
    h[size_t(o_ctx + s)] = real ? batch.ctx_len[size_t(s)] : q;
    if (real)
      std::copy(batch.block_tables[size_t(s)].begin(), batch.block_tables[size_t(s)].end(),
                h.begin() + o_tab + int64_t(s) * B);
  }
  h[size_t(o_qs + nb)] = rows;
  backend_.write(g.meta, h.data(), size_t(total) * sizeof(int32_t));

  auto record = [&, nb, B, q, rows]() {
    StepInputs in;
    in.ids = g.meta.slice_rows(0, rows);
    in.positions = g.meta.slice_rows(o_pos, rows);
    in.slots = g.meta.slice_rows(o_slot, rows);
    in.inv_freq = model_.inv_freq();
    recorded_step(g, kv, in, GraphStep{nb, B, q, o_qs, o_ctx, o_seq, o_tab}, g.ids_out.slice_rows(0, rows));
  };
  replay_or_record(g, std::make_tuple(nb, B, q), record);

  if (ids) {
    // The graph took the argmax; other sampling (and log-probabilities) run after it, on the graph's logits.
    if (sampling) pick(g.ids_out.slice_rows(0, n), g.logits.slice_rows(0, n), sampling, ids, true);
    ids->ids.resize(size_t(n));
    backend_.read(ids->ids.data(), g.ids_out, size_t(n) * sizeof(int32_t));
  } else {
    logits->resize(size_t(n) * size_t(c.vocab_size));
    backend_.read(logits->data(), g.logits, logits->size() * sizeof(float));
  }
  return true;
}

std::vector<std::vector<int32_t>> ModelRunner::chain(const Batch& first, const std::vector<Batch>& later, KvCache& kv) {
  std::vector<std::vector<int32_t>> out;
  if (chain_graph(first, later, kv, &out)) return out;
  // Step by step: each step's ids come back before the next is built.
  auto last_of_each = [](const Batch& b, const std::vector<int32_t>& ids) {
    std::vector<int32_t> v;
    if (ids.size() == size_t(b.num_seqs())) return ids;  // one logit row per sequence
    for (int s = 0; s < b.num_seqs(); ++s) v.push_back(ids[size_t(b.q_start[size_t(s) + 1] - 1)]);
    return v;
  };
  out.push_back(last_of_each(first, run(first, kv).ids));
  for (const Batch& b : later) {
    Batch step = b;
    for (int s = 0; s < step.num_seqs(); ++s) step.tokens[size_t(step.q_start[size_t(s)])] = out.back()[size_t(s)];
    out.push_back(last_of_each(step, run(step, kv).ids));
  }
  return out;
}

// The chain as one recorded graph (see chain()): step 0 as step_graph lays it out, then each later step's
// metadata; step 0's argmax of each sequence's last row is gathered into the later steps' token ids.
bool ModelRunner::chain_graph(const Batch& first, const std::vector<Batch>& later, KvCache& kv,
                              std::vector<std::vector<int32_t>>* result) {
  const ModelConfig& c = model_.config();
  const int q = graph_q(first), seqs = first.num_seqs();
  if (q == 0 || later.empty()) return false;
  for (const Batch& b : later)
    if (b.num_seqs() != seqs || b.num_tokens() != seqs || graph_q(b) != 1) return false;
  const int nb = graph_bucket(seqs), steps = 1 + int(later.size()), rows0 = nb * q;
  int widest = 1;
  for (const auto& t : first.block_tables) widest = std::max(widest, int(t.size()));
  for (const Batch& b : later)
    for (const auto& t : b.block_tables) widest = std::max(widest, int(t.size()));
  const int B = pow2_at_least(widest, 8);
  auto scratch_for = [&](int ns, int blocks, int per_seq) { return graph_scratch(kv, ns, blocks, per_seq); };
  // Metadata: step 0 [ids, pos, slots, token_seq: rows0][q_start: nb + 1][ctx: nb][tables: nb x B][gather: nb],
  // then per later step [pos, slots, token_seq: nb][q_start: nb + 1][ctx: nb][tables: nb x B].
  const int64_t step0 = 4 * int64_t(rows0) + 2 * nb + 1 + int64_t(nb) * B + nb;
  const int64_t per_later = 3 * int64_t(nb) + 2 * nb + 1 + int64_t(nb) * B;
  const int64_t total = step0 + per_later * (steps - 1);
  const size_t scratch = std::max(scratch_for(nb, B, q), scratch_for(nb, B, 1));
  const uint64_t kv_id = kv.id();
  const int64_t out_ids = int64_t(steps) * nb;
  if (!chains_ || chains_->seqs < nb || chains_->tokens < rows0 || chains_->max_blocks < B ||
      chains_->scratch_bytes < scratch || chains_->kv_id != kv_id || chains_->meta.numel() < total ||
      chains_->ids_out.numel() < out_ids + rows0) {
    auto g = std::make_unique<GraphState>();
    const GraphState* old = chains_.get();
    const bool same_kv = old && old->kv_id == kv_id;
    g->seqs = std::max({nb, graph_reserve_batch_, same_kv ? old->seqs : 0});
    g->tokens = std::max({rows0, g->seqs * std::max(q, graph_max_q_), same_kv ? old->tokens : 0});
    g->max_blocks = std::max({B, graph_reserve_blocks_, same_kv ? old->max_blocks : 0});
    chains_.reset();
    g->scratch_bytes = std::max({scratch, scratch_for(g->seqs, g->max_blocks, 1),
                                 scratch_for(g->seqs, g->max_blocks, std::max(q, graph_max_q_)), size_t(1)});
    g->kv_id = kv_id;
    g->ws = model_.make_workspace(g->tokens);
    const int max_steps = std::max(steps, 17);
    g->meta = backend_.alloc(DType::I32, {4 * int64_t(g->tokens) + int64_t(g->seqs) * (6 + 2 * g->max_blocks) * max_steps + 2 * max_steps});
    g->logits = backend_.alloc(DType::F32, {g->tokens, c.vocab_size});
    g->ids_out = backend_.alloc(DType::I32, {int64_t(max_steps) * g->seqs + g->tokens});
    g->scratch = backend_.alloc(DType::U8, {int64_t(g->scratch_bytes)});
    chains_ = std::move(g);
  }
  GraphState& g = *chains_;
  std::vector<int32_t>& h = g.host_meta;
  h.assign(size_t(total), 0);
  // Step 0.
  const int64_t o_pos = rows0, o_slot = 2 * rows0, o_seq = 3 * rows0, o_qs = 4 * rows0, o_ctx = o_qs + nb + 1,
                o_tab = o_ctx + nb, o_gather = o_tab + int64_t(nb) * B;
  const int n0 = first.num_tokens();
  for (int i = 0; i < rows0; ++i) {
    const bool real = i < n0;
    h[size_t(i)] = real ? first.tokens[size_t(i)] : 0;
    h[size_t(o_pos + i)] = real ? first.positions[size_t(i)] : i % q;
    h[size_t(o_slot + i)] = real ? first.slots[size_t(i)] : -1;
    h[size_t(o_seq + i)] = i / q;
  }
  for (int s = 0; s < nb; ++s) {
    const bool real = s < seqs;
    h[size_t(o_qs + s)] = s * q;
    h[size_t(o_ctx + s)] = real ? first.ctx_len[size_t(s)] : q;
    if (real)
      std::copy(first.block_tables[size_t(s)].begin(), first.block_tables[size_t(s)].end(),
                h.begin() + o_tab + int64_t(s) * B);
    h[size_t(o_gather + s)] = s * q + q - 1;
  }
  h[size_t(o_qs + nb)] = rows0;
  // Later steps: a padding sequence decodes at position 0 of its q entries' block, writing nothing.
  for (int k = 1; k < steps; ++k) {
    const Batch& b = later[size_t(k - 1)];
    const int64_t o = step0 + per_later * (k - 1);
    for (int s = 0; s < nb; ++s) {
      const bool real = s < seqs;
      h[size_t(o + s)] = real ? b.positions[size_t(s)] : 0;
      h[size_t(o + nb + s)] = real ? b.slots[size_t(s)] : -1;
      h[size_t(o + 2 * nb + s)] = s;
      h[size_t(o + 3 * nb + s)] = s;
      h[size_t(o + 4 * nb + 1 + s)] = real ? b.ctx_len[size_t(s)] : 1;
      if (real)
        std::copy(b.block_tables[size_t(s)].begin(), b.block_tables[size_t(s)].end(),
                  h.begin() + o + 5 * nb + 1 + int64_t(s) * B);
    }
    h[size_t(o + 3 * nb + nb)] = nb;
  }
  backend_.write(g.meta, h.data(), size_t(total) * sizeof(int32_t));

  auto record = [&, nb, B, q, rows0, steps]() {
    auto part = [&](int64_t off, int64_t count) { return g.meta.slice_rows(off, count); };
    const Tensor ids_all = g.ids_out.slice_rows(0, int64_t(steps) * nb);
    auto step = [&](const StepInputs& in, int64_t o_qs_, int64_t o_ctx_, int64_t o_seq_, int64_t o_tab_, int per_seq,
                    const Tensor& argmax_to) {
      recorded_step(g, kv, in, GraphStep{nb, B, per_seq, o_qs_, o_ctx_, o_seq_, o_tab_}, argmax_to);
    };
    StepInputs in0;
    in0.ids = part(0, rows0);
    in0.positions = part(o_pos, rows0);
    in0.slots = part(o_slot, rows0);
    in0.inv_freq = model_.inv_freq();
    if (q == 1) {
      step(in0, o_qs, o_ctx, o_seq, o_tab, 1, ids_all.slice_rows(0, nb));
    } else {
      const Tensor all = g.ids_out.slice_rows(int64_t(steps) * nb, rows0);
      step(in0, o_qs, o_ctx, o_seq, o_tab, q, all);
      backend_.gather_rows(ids_all.slice_rows(0, nb), all, part(o_gather, nb));
    }
    for (int k = 1; k < steps; ++k) {
      const int64_t o = step0 + per_later * (k - 1);
      StepInputs in;
      in.ids = ids_all.slice_rows(int64_t(k - 1) * nb, nb);
      in.positions = part(o, nb);
      in.slots = part(o + nb, nb);
      in.inv_freq = model_.inv_freq();
      step(in, o + 3 * nb, o + 4 * nb + 1, o + 2 * nb, o + 5 * nb + 1, 1, ids_all.slice_rows(int64_t(k) * nb, nb));
    }
  };
  // Keys of chains: q and the number of steps, apart from step_graph's (q < 0 marks a chain).
  replay_or_record(g, std::make_tuple(nb, B, -(q * 64 + steps)), record);
  std::vector<int32_t> ids(size_t(steps) * size_t(nb));
  backend_.read(ids.data(), g.ids_out, ids.size() * sizeof(int32_t));
  result->clear();
  for (int k = 0; k < steps; ++k)
    result->emplace_back(ids.begin() + int64_t(k) * nb, ids.begin() + int64_t(k) * nb + seqs);
  return true;
}

WarmUpReport ModelRunner::warm_up(KvCache& kv, const WarmUpShape& shape) {
  const auto t0 = std::chrono::steady_clock::now();
  WarmUpReport report;
  const ModelConfig& c = model_.config();
  const int bs = kv.block_size();
  const int max_len = shape.max_model_len > 0 ? shape.max_model_len : c.max_position_embeddings;
  const int capacity = std::min(shape.num_blocks * bs, max_len);  // tokens one scratch sequence may hold
  const bool gpu = backend_.device() == Device::CUDA;
  auto table = [&](int blocks) {
    std::vector<int32_t> t(static_cast<size_t>(std::max(1, blocks)));
    for (size_t i = 0; i < t.size(); ++i) t[i] = int32_t(i % size_t(shape.num_blocks));
    return t;
  };
  auto tokens = [&](int n, int from) {
    std::vector<int32_t> t(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) t[size_t(i)] = (from + i) % std::min(c.vocab_size, 1000);
    return t;
  };
  auto prompt = [&](int start, int len) {
    if (len <= 0 || start + len > capacity) return;
    Batch b;
    b.add_sequence(tokens(len, start), start, start, table((start + len + bs - 1) / bs), bs, Logits::Last);
    run(b, kv);
    ++report.steps;
  };
  // Prompt chunks.
  const int chunk = std::min(shape.max_batch_tokens, capacity);
  if (gpu) {
    for (int n = 16; n < chunk; n *= 2) prompt(0, n);
    prompt(0, chunk);
    prompt(chunk, chunk);
  } else {
    prompt(0, std::min(16, chunk));
  }
  backend_.synchronize();
  const auto t_prompts = std::chrono::steady_clock::now();
  report.prompt_seconds = std::chrono::duration<double>(t_prompts - t0).count();
  // Decode steps: every graph bucket, at every block-table width a sequence of max_model_len can reach.
  const int seqs = std::max(1, std::min(shape.max_num_seqs, 256));
  int widest = std::max(1, (max_len + bs - 1) / bs);
  // The graph buffers are made once for the widest table and the largest bucket: remaking them (for a larger
  // batch or a wider table) drops every graph recorded so far.
  if (gpu && backend_.can_record() && graph_max_batch_ > 0) {
    graph_reserve_blocks_ = pow2_at_least(widest, 8);
    graph_reserve_batch_ = graph_bucket(std::min(seqs, graph_max_batch_));
    graph_max_q_ = std::max(graph_max_q_, shape.verify_max_q);
  }
  auto decode = [&](int n, int blocks, const RowSampling& sampling) {
    Batch b;
    for (int i = 0; i < n; ++i) b.add_sequence(tokens(1, i), 0, 0, table(blocks), bs, Logits::Last);
    run(b, kv, sampling);
    ++report.steps;
  };
  std::vector<int> buckets;
  for (int n = 1; n <= seqs && gpu; n = graph_bucket(n) + 1) buckets.push_back(graph_bucket(n));
  if (!gpu) buckets = {1};
  const int runs = gpu && backend_.can_record() && graph_max_batch_ > 0 ? 2 : 1;  // eager, then recorded
  for (int n : buckets)
    for (int w = 8;; w *= 2) {
      for (int r = 0; r < runs; ++r) decode(n, std::min(w, widest), {});
      if (!gpu || w >= widest) break;
    }
  // Speculative verification: q tokens per sequence, a graph for each q the decode kernel takes.
  if (gpu && shape.verify_max_q > 1 && shape.verify_max_seqs > 0) {
    const int group = c.num_heads / c.num_kv_heads;
    for (int q = 2; q <= shape.verify_max_q && q * group <= 16; ++q)
      for (int n : buckets) {
        if (n > graph_bucket(std::min(shape.verify_max_seqs, seqs))) break;
        for (int w = 8;; w *= 2) {
          for (int r = 0; r < runs; ++r) {
            Batch b;
            for (int i = 0; i < n; ++i) b.add_sequence(tokens(q, i), 0, 0, table(std::min(w, widest)), bs, Logits::All);
            run(b, kv);
            ++report.steps;
          }
          if (w >= widest) break;
        }
      }
  }
  // A draft's chains, each recorded as one graph.
  if (gpu && shape.chain_steps > 0 && shape.verify_max_seqs > 0) {
    for (int q = 1; q <= 2; ++q)
      for (int n : buckets) {
        if (n > graph_bucket(std::min(shape.verify_max_seqs, seqs))) break;
        for (int w = 8;; w *= 2) {
          for (int r = 0; r < runs; ++r) {
            Batch first;
            std::vector<Batch> later(size_t(shape.chain_steps));
            for (int i = 0; i < n; ++i) {
              first.add_sequence(tokens(q, i), 0, 0, table(std::min(w, widest)), bs, Logits::All);
              for (int j = 0; j < shape.chain_steps; ++j)
                later[size_t(j)].add_sequence({0}, q + j, q + j, table(std::min(w, widest)), bs, Logits::Last);
            }
            chain(first, later, kv);
            ++report.steps;
          }
          if (w >= widest) break;
        }
      }
  }
  // Sampling, log-probabilities and a grammar's mask.
  RowSampling s;
  SampleRow row;
  row.params.temperature = 0.7f;
  row.params.top_p = 0.9f;
  row.params.top_k = 40;
  row.params.repetition_penalty = 1.1f;
  row.uniform = 0.5;
  s.rows = {row};
  s.penalties = {PenaltyEntry{1, 1}};
  s.rows[0].penalty_end = 1;
  s.logprobs = 1;
  s.mask_words = (c.vocab_size + 31) / 32;
  s.fill_masks = [&](uint32_t* masks) { std::fill(masks, masks + s.mask_words, ~0u); };
  decode(1, 1, s);
  report.graphs = int(graphs_ ? graphs_->graphs.size() : 0) + int(chains_ ? chains_->graphs.size() : 0);
  backend_.synchronize();
  const auto t_end = std::chrono::steady_clock::now();
  report.seconds = std::chrono::duration<double>(t_end - t0).count();
  report.decode_seconds = std::chrono::duration<double>(t_end - t_prompts).count();
  return report;
}

}  // namespace rill
