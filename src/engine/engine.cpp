#include "engine/engine.h"

#include <algorithm>
#include <cmath>

namespace rill {

namespace {

std::vector<float> log_softmax(const float* x, size_t n) {
  const float mx = *std::max_element(x, x + n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(double(x[i] - mx));
  const float lse = mx + float(std::log(sum));
  std::vector<float> out(x, x + n);
  for (float& v : out) v -= lse;
  return out;
}

std::vector<std::pair<int32_t, float>> top_k(const std::vector<float>& lp, int k) {
  std::vector<int32_t> idx(lp.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = int32_t(i);
  k = std::min<int>(k, int(idx.size()));
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(),
                    [&](int32_t a, int32_t b) { return lp[size_t(a)] > lp[size_t(b)] || (lp[size_t(a)] == lp[size_t(b)] && a < b); });
  std::vector<std::pair<int32_t, float>> out;
  for (int i = 0; i < k; ++i) out.emplace_back(idx[size_t(i)], lp[size_t(idx[size_t(i)])]);
  return out;
}

}  // namespace

Engine::Engine(Model& model, EngineConfig config)
    : model_(model),
      config_([&] {
        RILL_CHECK(config.num_blocks > 0, "engine: num_blocks must be positive");
        RILL_CHECK(config.max_batch_tokens > 0, "engine: max_batch_tokens must be positive");
        RILL_CHECK(config.max_num_seqs > 0, "engine: max_num_seqs must be positive");
        if (config.max_model_len <= 0) config.max_model_len = model.config().max_position_embeddings;
        return config;
      }()),
      kv_(model.backend(), model.config(), config_.num_blocks, config_.block_size),
      scheduler_(kv_.blocks(), SchedulerConfig{config_.max_batch_tokens, config_.max_num_seqs}) {
  counters_.blocks_total = config_.num_blocks;
  metrics_ = counters_;
  metrics_.blocks_free = config_.num_blocks;
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() { shutdown(); }

void Engine::shutdown() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::shared_ptr<RequestStream> Engine::submit(Request r) {
  const int vocab = model_.config().vocab_size;
  RILL_CHECK(!r.prompt.empty(), "prompt: must contain at least one token");
  for (int32_t t : r.prompt)
    RILL_CHECK(t >= 0 && t < vocab, "prompt: token " + std::to_string(t) + " is outside the vocabulary (" +
                                        std::to_string(vocab) + " tokens)");
  RILL_CHECK(r.max_tokens >= 1, "max_tokens: must be at least 1");
  RILL_CHECK(r.logprobs <= 20, "logprobs: at most 20 alternatives");
  r.sampling.validate();
  if (r.kv_policy.rolling()) {
    r.kv_policy.validate(config_.block_size, config_.max_model_len);
    const int need = SinkWindowState::max_blocks(r.kv_policy, config_.block_size);
    RILL_CHECK(need <= config_.num_blocks, "kv_policy: sinks + window need " + std::to_string(need) +
                                               " KV blocks; the cache has " + std::to_string(config_.num_blocks));
    return enqueue(std::move(r));
  }
  const int64_t total = int64_t(r.prompt.size()) + r.max_tokens;
  RILL_CHECK(total <= config_.max_model_len,
             "prompt (" + std::to_string(r.prompt.size()) + " tokens) + max_tokens (" + std::to_string(r.max_tokens) +
                 ") = " + std::to_string(total) + " exceeds the maximum context length of " +
                 std::to_string(config_.max_model_len) + " tokens");
  RILL_CHECK(total <= int64_t(config_.num_blocks) * config_.block_size,
             "prompt + max_tokens = " + std::to_string(total) + " tokens does not fit the KV cache (" +
                 std::to_string(int64_t(config_.num_blocks) * config_.block_size) + " tokens)");
  return enqueue(std::move(r));
}

std::shared_ptr<RequestStream> Engine::enqueue(Request r) {
  auto stream = std::make_shared<RequestStream>();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) throw EngineFull("the server is shutting down");
    const int queued = int(incoming_.size()) + metrics_.waiting;
    if (queued >= config_.max_waiting)
      throw EngineFull("the server is overloaded: " + std::to_string(queued) + " requests are waiting");
    incoming_.push_back(std::make_unique<Sequence>(next_id_++, std::move(r), stream));
  }
  wake_.notify_one();
  return stream;
}

EngineMetrics Engine::metrics() const {
  std::lock_guard<std::mutex> lock(mu_);
  return metrics_;
}

void Engine::finish(Sequence* s, FinishReason reason, const std::string& error) {
  Event e;
  e.finish = reason;
  e.error = error;
  e.prompt_tokens = s->prompt_len;
  e.completion_tokens = s->generated();
  e.cached_tokens = s->cached_tokens;
  s->stream->push(std::move(e));
  scheduler_.remove(s);
  ++counters_.requests_finished;
}

void Engine::loop() {
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] {
        return stop_ || !incoming_.empty() || !scheduler_.running().empty() || !scheduler_.waiting().empty();
      });
      if (stop_) break;
      for (auto& s : incoming_) scheduler_.add(std::move(s));
      incoming_.clear();
    }
    step();
  }
  // Shutting down: every request still known ends as cancelled.
  std::vector<Sequence*> left;
  for (const auto& s : scheduler_.running()) left.push_back(s.get());
  for (const auto& s : scheduler_.waiting()) left.push_back(s.get());
  for (Sequence* s : left) finish(s, FinishReason::Cancelled);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& s : incoming_) {
    Event e;
    e.finish = FinishReason::Cancelled;
    s->stream->push(std::move(e));
  }
  incoming_.clear();
}

void Engine::step() {
  // Cancelled requests free their blocks before anything else runs.
  std::vector<Sequence*> cancelled;
  for (const auto& s : scheduler_.running())
    if (s->stream->cancelled()) cancelled.push_back(s.get());
  for (const auto& s : scheduler_.waiting())
    if (s->stream->cancelled()) cancelled.push_back(s.get());
  for (Sequence* s : cancelled) finish(s, FinishReason::Cancelled);

  std::vector<ScheduledChunk> chunks = scheduler_.schedule();
  if (chunks.empty()) {
    // Nothing runs and nothing will free blocks: the head request cannot fit beside the cached prefixes
    // it would need; submit() rejects requests larger than the whole cache, so this is rare.
    if (scheduler_.running().empty() && !scheduler_.waiting().empty())
      finish(scheduler_.waiting().front().get(), FinishReason::Error, "not enough KV cache blocks for this request");
  } else {
    Batch batch;
    std::vector<const ScheduledChunk*> sampled;
    for (const auto& c : chunks) {
      Sequence* s = c.seq;
      int index = c.start;
      RollingView view;
      if (s->is_rolling()) {
        const KvPolicy& p = s->request.kv_policy;
        index = s->rolling.cache_index(c.start, p, config_.block_size);
        auto v = s->rolling.view(c.start, c.count, p, config_.block_size);
        view = {v.active, v.sinks, std::move(v.hole_end), std::move(v.sink_pos)};
      }
      batch.add_sequence(std::vector<int32_t>(s->tokens.begin() + c.start, s->tokens.begin() + c.start + c.count),
                         c.start, index, s->blocks, config_.block_size, c.sample ? Logits::Last : Logits::None, view);
      if (c.sample) sampled.push_back(&c);
    }
    model_.forward(batch, kv_, &logits_);
    ++counters_.steps;
    const size_t vocab = size_t(model_.config().vocab_size);
    const auto& eos = model_.config().eos_token_ids;
    std::vector<Sequence*> done;
    std::vector<FinishReason> reasons;
    for (const auto& c : chunks) {
      Sequence* s = c.seq;
      if (c.start < s->prompt_len) counters_.prompt_tokens += std::min(c.start + c.count, s->prompt_len) - c.start;
      s->computed = c.start + c.count;
      if (!s->is_rolling() || s->rolling.evicted_blocks == 0)  // after an eviction the table no longer maps the stream
        kv_.blocks().commit_full_blocks(s->tokens, s->blocks, s->computed);
    }
    for (size_t k = 0; k < sampled.size(); ++k) {
      Sequence* s = sampled[k]->seq;
      float* row = logits_.data() + k * vocab;
      std::vector<float> logprobs;
      if (s->request.logprobs >= 0) logprobs = log_softmax(row, vocab);  // before the sampler edits the row
      const int32_t tok = s->sampler.sample(row, int(vocab));
      s->tokens.push_back(tok);
      ++counters_.generated_tokens;
      Event e;
      e.token = tok;
      if (!logprobs.empty()) {
        e.logprob = logprobs[size_t(tok)];
        e.top_logprobs = top_k(logprobs, s->request.logprobs);
      }
      s->stream->push(e);
      const bool is_eos = !s->request.ignore_eos &&
                          (std::find(eos.begin(), eos.end(), tok) != eos.end() ||
                           std::find(s->request.stop_ids.begin(), s->request.stop_ids.end(), tok) != s->request.stop_ids.end());
      if (is_eos || s->generated() >= s->request.max_tokens) {
        done.push_back(s);
        reasons.push_back(is_eos ? FinishReason::Stop : FinishReason::Length);
      }
    }
    for (size_t k = 0; k < done.size(); ++k) finish(done[k], reasons[k]);
  }
  EngineMetrics m = counters_;
  m.running = int(scheduler_.running().size());
  m.waiting = int(scheduler_.waiting().size());
  m.blocks_free = kv_.blocks().num_free();
  m.blocks_cached_free = kv_.blocks().num_cached_free();
  m.prefix_lookup_tokens = kv_.blocks().lookups();
  m.prefix_hit_tokens = kv_.blocks().hits();
  m.preemptions = scheduler_.preemptions();
  std::lock_guard<std::mutex> lock(mu_);
  metrics_ = m;
}

}  // namespace rill
