#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <future>

namespace rill {

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
  RILL_CHECK(r.logprobs <= kMaxTopLogprobs, "logprobs: at most " + std::to_string(kMaxTopLogprobs) + " alternatives");
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
  if (s->stream) s->stream->push(std::move(e));
  if (s->session) sessions_.erase(s->session);  // shutting down, or an error: the session goes too
  scheduler_.remove(s);
  ++counters_.requests_finished;
}

// ---- Streaming sessions (all of this runs on the loop thread, through on_loop) ----

struct Engine::SessionSlot {
  uint64_t id = 0;
  std::unique_ptr<Sequence> parked;  // idle, holding its KV blocks
  Sequence* active = nullptr;        // in the scheduler
  std::chrono::steady_clock::time_point last_used = std::chrono::steady_clock::now();
  Sequence* seq() const { return parked ? parked.get() : active; }
};

template <class F>
auto Engine::on_loop(F f) -> decltype(f()) {
  std::packaged_task<decltype(f())()> task(std::move(f));
  auto result = task.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) throw EngineFull("the server is shutting down");
    commands_.push_back([&task] { task(); });
  }
  wake_.notify_one();
  return result.get();
}

Engine::SessionSlot& Engine::slot(uint64_t id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) throw SessionNotFound("no session " + std::to_string(id) + " (deleted, expired, or never created)");
  return *it->second;
}

SessionStatus Engine::status_of(uint64_t id, const SessionSlot& sl) const {
  const Sequence* s = sl.seq();
  SessionStatus st;
  st.id = id;
  st.kv_policy = s->request.kv_policy;
  st.tokens = int64_t(s->tokens.size());
  st.pending = int64_t(s->tokens.size()) - s->computed;
  st.tokens_cached = s->computed;
  if (s->is_rolling() && s->computed > 0) {
    const SinkWindowState last{s->rolling.evictions_for(s->computed, s->request.kv_policy, config_.block_size)};
    st.tokens_cached = last.visible(s->computed, s->request.kv_policy, config_.block_size);
  }
  st.blocks = int(s->blocks.size());
  st.kv_bytes = size_t(st.blocks) * size_t(config_.block_size) * KvCache::bytes_per_token(model_.config(), kv_.dtype());
  st.generating = s->generating;
  st.idle_seconds = sl.active ? 0 : std::chrono::duration<double>(std::chrono::steady_clock::now() - sl.last_used).count();
  return st;
}

void Engine::wake_session(SessionSlot& sl) {
  sl.last_used = std::chrono::steady_clock::now();
  if (!sl.parked) return;
  sl.active = sl.parked.get();
  scheduler_.add(std::move(sl.parked));
}

void Engine::park(Sequence* s) {
  SessionSlot& sl = slot(s->session);
  sl.parked = scheduler_.detach(s);
  sl.active = nullptr;
  sl.last_used = std::chrono::steady_clock::now();
}

void Engine::end_generation(Sequence* s, FinishReason reason, const std::string& error) {
  Event e;
  e.finish = reason;
  e.error = error;
  e.prompt_tokens = s->prompt_len;
  e.completion_tokens = s->generated();
  s->stream->push(std::move(e));
  s->stream.reset();
  s->generating = false;
  ++counters_.requests_finished;
  slot(s->session).last_used = std::chrono::steady_clock::now();
}

void Engine::expire_sessions() {
  const auto now = std::chrono::steady_clock::now();
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    SessionSlot& sl = *it->second;
    if (sl.parked && std::chrono::duration<double>(now - sl.last_used).count() > config_.session_ttl_seconds) {
      kv_.blocks().release(&sl.parked->blocks);
      it = sessions_.erase(it);
      ++counters_.sessions_expired;
    } else {
      ++it;
    }
  }
}

uint64_t Engine::create_session(KvPolicy policy) {
  if (policy.rolling()) {
    policy.validate(config_.block_size, config_.max_model_len, "kv_policy");
    const int need = SinkWindowState::max_blocks(policy, config_.block_size);
    RILL_CHECK(need <= config_.num_blocks, "kv_policy: sinks + window need " + std::to_string(need) +
                                               " KV blocks; the cache has " + std::to_string(config_.num_blocks));
  }
  uint64_t seq_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    seq_id = next_id_++;
  }
  return on_loop([&]() -> uint64_t {
    if (int(sessions_.size()) >= config_.max_sessions)
      throw EngineFull("too many sessions: " + std::to_string(sessions_.size()) + " are open (--max-sessions " +
                       std::to_string(config_.max_sessions) + "); delete one or wait for one to expire");
    auto sl = std::make_unique<SessionSlot>();
    sl->id = next_session_++;
    Request r;
    r.kv_policy = policy;
    r.max_tokens = 0;
    sl->parked = std::make_unique<Sequence>(seq_id, r, nullptr);
    sl->parked->session = sl->id;
    sl->parked->generating = false;
    const uint64_t id = sl->id;
    sessions_[id] = std::move(sl);
    return id;
  });
}

SessionStatus Engine::append_session(uint64_t id, const std::vector<int32_t>& tokens) {
  const int vocab = model_.config().vocab_size;
  for (int32_t t : tokens)
    RILL_CHECK(t >= 0 && t < vocab, "tokens: token " + std::to_string(t) + " is outside the vocabulary (" +
                                        std::to_string(vocab) + " tokens)");
  return on_loop([&] {
    SessionSlot& sl = slot(id);
    Sequence* s = sl.seq();
    if (s->generating) throw SessionBusy("session " + std::to_string(id) + " is generating; append when it ends");
    if (!s->is_rolling())
      RILL_CHECK(int64_t(s->tokens.size() + tokens.size()) <= config_.max_model_len,
                 "the session would hold " + std::to_string(s->tokens.size() + tokens.size()) +
                     " tokens, beyond the maximum context length of " + std::to_string(config_.max_model_len) +
                     " (a session with a sink kv_policy never runs out of context)");
    s->tokens.insert(s->tokens.end(), tokens.begin(), tokens.end());
    if (!tokens.empty()) wake_session(sl);
    return status_of(id, sl);
  });
}

std::shared_ptr<RequestStream> Engine::generate_session(uint64_t id, Request r) {
  RILL_CHECK(r.max_tokens >= 1, "max_tokens: must be at least 1");
  RILL_CHECK(r.logprobs <= kMaxTopLogprobs, "logprobs: at most " + std::to_string(kMaxTopLogprobs) + " alternatives");
  r.sampling.validate();
  return on_loop([&] {
    SessionSlot& sl = slot(id);
    Sequence* s = sl.seq();
    if (s->generating) throw SessionBusy("session " + std::to_string(id) + " is already generating");
    RILL_CHECK(!s->tokens.empty(), "the session is empty: append text before generating");
    if (!s->is_rolling())
      RILL_CHECK(int64_t(s->tokens.size()) + r.max_tokens <= config_.max_model_len,
                 "the session holds " + std::to_string(s->tokens.size()) + " tokens; + max_tokens (" +
                     std::to_string(r.max_tokens) + ") exceeds the maximum context length of " +
                     std::to_string(config_.max_model_len));
    auto stream = std::make_shared<RequestStream>();
    s->stream = stream;
    s->request.max_tokens = r.max_tokens;
    s->request.sampling = r.sampling;
    s->request.ignore_eos = r.ignore_eos;
    s->request.stop_ids = r.stop_ids;
    s->request.logprobs = r.logprobs;
    s->sampler = Sampler(r.sampling);
    const SamplingParams& sp = r.sampling;
    if (sp.repetition_penalty != 1.f || sp.presence_penalty != 0.f || sp.frequency_penalty != 0.f)
      s->sampler.add_prompt(s->tokens);  // O(history): only when a penalty needs it
    s->prompt_len = s->gen_start = int(s->tokens.size());
    s->generating = true;
    if (s->remaining() == 0) s->computed -= 1;  // run the last token again: its logits give the first new token
    wake_session(sl);
    return stream;
  });
}

SessionStatus Engine::session_status(uint64_t id) {
  return on_loop([&] { return status_of(id, slot(id)); });
}

std::vector<SessionStatus> Engine::list_sessions() {
  return on_loop([&] {
    std::vector<SessionStatus> out;
    for (const auto& [id, sl] : sessions_) out.push_back(status_of(id, *sl));
    std::sort(out.begin(), out.end(), [](const SessionStatus& a, const SessionStatus& b) { return a.id < b.id; });
    return out;
  });
}

bool Engine::delete_session(uint64_t id) {
  return on_loop([&] {
    auto it = sessions_.find(id);
    if (it == sessions_.end()) return false;
    SessionSlot& sl = *it->second;
    if (sl.active) {
      Sequence* s = sl.active;
      if (s->generating) end_generation(s, FinishReason::Cancelled);
      scheduler_.remove(s);
    } else {
      kv_.blocks().release(&sl.parked->blocks);
    }
    sessions_.erase(id);
    return true;
  });
}

void Engine::loop() {
  std::vector<std::function<void()>> commands;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      auto ready = [&] {
        return stop_ || !incoming_.empty() || !commands_.empty() || !scheduler_.running().empty() ||
               !scheduler_.waiting().empty();
      };
      if (sessions_.empty()) wake_.wait(lock, ready);
      else wake_.wait_for(lock, std::chrono::milliseconds(200), ready);  // also wakes to expire idle sessions
      if (stop_) break;
      for (auto& s : incoming_) scheduler_.add(std::move(s));
      incoming_.clear();
      commands.swap(commands_);
    }
    for (auto& c : commands) c();
    commands.clear();
    expire_sessions();
    step();
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    commands.swap(commands_);
  }
  for (auto& c : commands) c();  // their callers wait for them; what they queue is cancelled below
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
    if (s->stream && s->stream->cancelled()) cancelled.push_back(s.get());
  for (const auto& s : scheduler_.waiting())
    if (s->stream && s->stream->cancelled()) cancelled.push_back(s.get());
  for (Sequence* s : cancelled) {
    if (s->session) end_generation(s, FinishReason::Cancelled);  // the session stays; its pending token runs
    else finish(s, FinishReason::Cancelled);
  }

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
    // Tokens are picked on the device (the argmax when every row is plain greedy, else the whole sampler), and
    // so are the log-probabilities rows ask for: only ids and those come back.
    bool all_greedy = true;
    DeviceSampling sampling;
    for (const ScheduledChunk* c : sampled) {
      all_greedy = all_greedy && c->seq->request.sampling.plain_greedy();
      sampling.logprobs = std::max(sampling.logprobs, c->seq->request.logprobs);
    }
    if (!all_greedy)
      for (const ScheduledChunk* c : sampled) sampling.rows.push_back(c->seq->sampler.next_row(&sampling.penalties));
    std::vector<int32_t> picked;
    model_.forward(batch, kv_, &logits_, &picked, all_greedy && sampling.logprobs < 0 ? nullptr : &sampling);
    ++counters_.steps;
    const auto& eos = model_.config().eos_token_ids;
    std::vector<Sequence*> done;
    std::vector<FinishReason> reasons;
    std::vector<std::string> errors;
    for (const auto& c : chunks) {
      Sequence* s = c.seq;
      if (c.start < s->prompt_len) counters_.prompt_tokens += std::min(c.start + c.count, s->prompt_len) - c.start;
      s->computed = c.start + c.count;
      if (!s->is_rolling() || s->rolling.evicted_blocks == 0)  // after an eviction the table no longer maps the stream
        kv_.blocks().commit_full_blocks(s->tokens, s->blocks, s->computed);
    }
    for (size_t k = 0; k < sampled.size(); ++k) {
      Sequence* s = sampled[k]->seq;
      const int32_t tok = picked[k];
      if (tok < 0) {  // every logit NaN: this request ends, the others go on
        done.push_back(s);
        reasons.push_back(FinishReason::Error);
        errors.push_back("the model's logits are all NaN: nothing can be sampled");
        continue;
      }
      s->sampler.record(tok);
      s->tokens.push_back(tok);
      ++counters_.generated_tokens;
      Event e;
      e.token = tok;
      if (s->request.logprobs >= 0) {
        const float* lp = sampling.logprobs_out.data() + k * size_t(1 + 2 * sampling.logprobs);
        e.logprob = lp[0];
        for (int j = 0; j < s->request.logprobs && lp[1 + 2 * j] >= 0; ++j)
          e.top_logprobs.emplace_back(int32_t(lp[1 + 2 * j]), lp[2 + 2 * j]);
      }
      s->stream->push(e);
      const bool is_eos = !s->request.ignore_eos &&
                          (std::find(eos.begin(), eos.end(), tok) != eos.end() ||
                           std::find(s->request.stop_ids.begin(), s->request.stop_ids.end(), tok) != s->request.stop_ids.end());
      if (is_eos || s->generated() >= s->request.max_tokens) {
        done.push_back(s);
        reasons.push_back(is_eos ? FinishReason::Stop : FinishReason::Length);
        errors.emplace_back();
      }
    }
    // Sessions of this step (collected first: finish() frees the ordinary sequences the chunks point to).
    std::vector<Sequence*> sessions;
    for (const auto& c : chunks)
      if (c.seq->session) sessions.push_back(c.seq);
    for (size_t k = 0; k < done.size(); ++k) {
      if (done[k]->session) end_generation(done[k], reasons[k], errors[k]);
      else finish(done[k], reasons[k], errors[k]);
    }
    // Sessions with nothing left to run are parked with their KV.
    for (Sequence* s : sessions)
      if (!s->generating && s->remaining() == 0) park(s);
  }
  EngineMetrics m = counters_;
  m.running = int(scheduler_.running().size());
  m.waiting = int(scheduler_.waiting().size());
  m.blocks_free = kv_.blocks().num_free();
  m.blocks_cached_free = kv_.blocks().num_cached_free();
  m.prefix_lookup_tokens = kv_.blocks().lookups();
  m.prefix_hit_tokens = kv_.blocks().hits();
  m.preemptions = scheduler_.preemptions();
  m.sessions = int(sessions_.size());
  m.session_blocks = 0;
  for (const auto& [id, sl] : sessions_) m.session_blocks += int(sl->seq()->blocks.size());
  std::lock_guard<std::mutex> lock(mu_);
  metrics_ = m;
}

}  // namespace rill
