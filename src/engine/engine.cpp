#include "engine/engine.h"

#include <algorithm>
#include <chrono>
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
      runner_(model),
      scheduler_(kv_.blocks(), SchedulerConfig{config_.max_batch_tokens, config_.max_num_seqs}),
      sessions_(config_.max_sessions, config_.session_ttl_seconds) {
  config_.spec.validate(model.config().vocab_size);
  if (config_.spec.method == SpecMethod::Draft)
    draft_ = std::make_unique<DraftProposer>(*config_.spec.draft, config_.num_blocks, config_.block_size,
                                             config_.max_batch_tokens);
  counters_.blocks_total = config_.num_blocks;
  metrics_ = counters_;
  metrics_.blocks_free = config_.num_blocks;
  const bool spec = config_.spec.method != SpecMethod::None;
  const int spec_seqs = std::min(config_.spec.max_batch, config_.max_num_seqs);
  if (spec) runner_.set_graph_max_q(config_.spec.tokens + 1);  // verification steps replay graphs too
  if (draft_) draft_->runner().set_graph_max_q(2);              // catching up after all drafts were accepted
  if (config_.warm_up)
    warm_up_ = runner_.warm_up(kv_, WarmUpShape{config_.max_batch_tokens, config_.max_num_seqs, config_.max_model_len,
                                                config_.num_blocks, spec ? config_.spec.tokens + 1 : 1, spec_seqs});
  if (config_.warm_up && draft_) {  // the draft's steps too (its decode graphs, up to the speculating batch)
    const WarmUpReport w = draft_->runner().warm_up(
        draft_->kv(), WarmUpShape{config_.max_batch_tokens, spec_seqs, config_.max_model_len, config_.num_blocks, 2,
                                  spec_seqs, config_.spec.tokens - 1});
    warm_up_.steps += w.steps;
    warm_up_.graphs += w.graphs;
    warm_up_.seconds += w.seconds;
    warm_up_.prompt_seconds += w.prompt_seconds;
    warm_up_.decode_seconds += w.decode_seconds;
  }
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

// ---- Requests in ----

void Engine::check_tokens(const std::vector<int32_t>& tokens, const char* what) const {
  const int vocab = model_.config().vocab_size;
  for (int32_t t : tokens)
    RILL_CHECK(t >= 0 && t < vocab, std::string(what) + ": token " + std::to_string(t) +
                                        " is outside the vocabulary (" + std::to_string(vocab) + " tokens)");
}

void Engine::validate_policy(const KvPolicy& policy) const {
  if (!policy.is_sink_window()) return;
  policy.validate(config_.block_size, config_.max_model_len, "kv_policy");
  const int need = SinkWindowState::max_blocks(policy, config_.block_size);
  RILL_CHECK(need <= config_.num_blocks, "kv_policy: sinks + window need " + std::to_string(need) +
                                             " KV blocks; the cache has " + std::to_string(config_.num_blocks));
}

void Engine::validate(const Request& r, const KvPolicy& policy, int64_t history) const {
  RILL_CHECK(history > 0 || !r.prompt.empty(), "prompt: must contain at least one token");
  check_tokens(r.prompt, "prompt");
  RILL_CHECK(r.max_tokens >= 1, "max_tokens: must be at least 1");
  RILL_CHECK(r.logprobs <= kMaxTopLogprobs, "logprobs: at most " + std::to_string(kMaxTopLogprobs) + " alternatives");
  r.sampling.validate();
  if (r.grammar)
    RILL_CHECK(r.grammar->vocab().size() == model_.config().vocab_size,
               "grammar: compiled for " + std::to_string(r.grammar->vocab().size()) + " tokens; the model has " +
                   std::to_string(model_.config().vocab_size));
  validate_policy(policy);
  if (policy.is_sink_window()) return;  // no context limit
  const int64_t total = history + int64_t(r.prompt.size()) + r.max_tokens;
  const std::string held = history > 0 ? "the session (" + std::to_string(history) + " tokens)"
                                       : "prompt (" + std::to_string(r.prompt.size()) + " tokens)";
  RILL_CHECK(total <= config_.max_model_len,
             held + " + max_tokens (" + std::to_string(r.max_tokens) + ") = " + std::to_string(total) +
                 " exceeds the maximum context length of " + std::to_string(config_.max_model_len) + " tokens" +
                 (history > 0 ? " (a session with a sink kv_policy never runs out of context)" : ""));
  RILL_CHECK(total <= int64_t(config_.num_blocks) * config_.block_size,
             held + " + max_tokens = " + std::to_string(total) + " tokens does not fit the KV cache (" +
                 std::to_string(int64_t(config_.num_blocks) * config_.block_size) + " tokens)");
}

std::shared_ptr<RequestStream> Engine::submit(Request r) {
  validate(r, r.kv_policy, 0);
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

template <class F>
auto Engine::on_loop(F f) -> decltype(f()) {
  // The metrics show the call's effect (a session made or deleted, its blocks freed) by the time it returns.
  std::packaged_task<decltype(f())()> task([this, &f] {
    auto result = f();
    publish_metrics();
    return result;
  });
  auto result = task.get_future();
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stop_) throw EngineFull("the server is shutting down");
    commands_.push_back([&task] { task(); });
  }
  wake_.notify_one();
  return result.get();
}

// ---- Streaming sessions (the parts that touch the table run on the loop thread, through on_loop) ----

SessionStatus Engine::status_of(const Session& session) const {
  return sessions_.status(session, config_.block_size, KvCache::bytes_per_token(model_.config(), kv_.dtype()));
}

void Engine::wake(Session& session) {
  session.last_used = Session::Clock::now();
  if (!session.parked) return;
  session.active = session.parked.get();
  scheduler_.add(std::move(session.parked));
}

void Engine::park(Sequence* s) {
  Session& session = sessions_.get(s->session);
  session.parked = scheduler_.detach(s);
  session.active = nullptr;
  session.last_used = Session::Clock::now();
}

void Engine::expire_sessions() {
  for (auto& gone : sessions_.expire()) {
    kv_.blocks().release(&gone->parked->blocks);
    ++counters_.sessions_expired;
  }
}

uint64_t Engine::create_session(KvPolicy policy, std::string defaults) {
  validate_policy(policy);
  uint64_t seq_id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    seq_id = next_id_++;
  }
  return on_loop([&]() -> uint64_t {
    Request r;
    r.kv_policy = policy;
    r.max_tokens = 0;
    return sessions_.create(std::make_unique<Sequence>(seq_id, r, nullptr), std::move(defaults)).id;
  });
}

SessionStatus Engine::append_session(uint64_t id, const std::vector<int32_t>& tokens) {
  check_tokens(tokens, "tokens");
  return on_loop([&] {
    Session& session = sessions_.get(id);
    Sequence* s = session.seq();
    if (s->generating) throw SessionBusy("session " + std::to_string(id) + " is generating; append when it ends");
    if (!s->is_sink_window())
      RILL_CHECK(int64_t(s->tokens.size() + tokens.size()) <= config_.max_model_len,
                 "the session would hold " + std::to_string(s->tokens.size() + tokens.size()) +
                     " tokens, beyond the maximum context length of " + std::to_string(config_.max_model_len) +
                     " (a session with a sink kv_policy never runs out of context)");
    s->tokens.insert(s->tokens.end(), tokens.begin(), tokens.end());
    if (!tokens.empty()) wake(session);
    return status_of(session);
  });
}

std::shared_ptr<RequestStream> Engine::generate_session(uint64_t id, Request r) {
  r.prompt.clear();  // the session's tokens are the prompt
  return on_loop([&] {
    Session& session = sessions_.get(id);
    Sequence* s = session.seq();
    if (s->generating) throw SessionBusy("session " + std::to_string(id) + " is already generating");
    RILL_CHECK(!s->tokens.empty(), "the session is empty: append text before generating");
    validate(r, s->request.kv_policy, int64_t(s->tokens.size()));
    auto stream = std::make_shared<RequestStream>();
    s->stream = stream;
    r.kv_policy = s->request.kv_policy;
    s->request = std::move(r);
    s->sampler = Sampler(s->request.sampling);
    s->matcher = s->request.grammar ? std::make_unique<grammar::Matcher>(s->request.grammar) : nullptr;
    const SamplingParams& sp = s->request.sampling;
    if (sp.repetition_penalty != 1.f || sp.presence_penalty != 0.f || sp.frequency_penalty != 0.f)
      s->sampler.add_prompt(s->tokens);  // O(history): only when a penalty needs it
    s->prompt_len = s->gen_start = int(s->tokens.size());
    s->generating = true;
    if (s->remaining() == 0) s->computed -= 1;  // run the last token again: its logits give the first new token
    wake(session);
    return stream;
  });
}

SessionStatus Engine::session_status(uint64_t id) {
  return on_loop([&] { return status_of(sessions_.get(id)); });
}

std::vector<SessionStatus> Engine::list_sessions() {
  return on_loop([&] {
    std::vector<SessionStatus> out;
    for (const auto& [sid, session] : sessions_.all()) out.push_back(status_of(*session));
    return out;
  });
}

bool Engine::delete_session(uint64_t id) {
  return on_loop([&] {
    Session* session;
    try {
      session = &sessions_.get(id);
    } catch (const SessionNotFound&) {
      return false;
    }
    if (session->active) {
      Sequence* s = session->active;
      if (s->generating) end_generation(s, FinishReason::Cancelled);
      scheduler_.remove(s);
    } else {
      kv_.blocks().release(&session->parked->blocks);
    }
    sessions_.erase(id);
    return true;
  });
}

// ---- Requests out ----

void Engine::end_generation(Sequence* s, FinishReason reason, const std::string& error) {
  if (s->stream) {
    Event e;
    e.finish = reason;
    e.error = error;
    e.prompt_tokens = s->prompt_len;
    e.completion_tokens = s->generated();
    e.cached_tokens = s->session ? 0 : s->cached_tokens;
    s->stream->push(std::move(e));
    ++counters_.requests_finished;
  }
  if (!s->session) {
    scheduler_.remove(s);
    return;
  }
  s->stream.reset();
  s->generating = false;
  sessions_.get(s->session).last_used = Session::Clock::now();
}

void Engine::remove(Sequence* s, FinishReason reason, const std::string& error) {
  const uint64_t session = s->session;
  s->session = 0;  // end_generation() then removes it as an ordinary request
  end_generation(s, reason, error);
  if (session) sessions_.erase(session);
}

FinishReason Engine::stop_reason(const Sequence& s, int32_t token, bool grammar_done) const {
  const Request& r = s.request;
  const std::vector<int>& eos = model_.config().eos_token_ids;
  const bool end_token = std::find(eos.begin(), eos.end(), token) != eos.end() ||
                         std::find(r.stop_ids.begin(), r.stop_ids.end(), token) != r.stop_ids.end();
  if (end_token && !r.ignore_eos) return FinishReason::Stop;
  if (grammar_done) return FinishReason::Stop;  // the grammar is complete: nothing may follow
  if (s.generated() >= r.max_tokens) return FinishReason::Length;
  return FinishReason::None;
}

// ---- The loop ----

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
  // Shutting down (submit() and on_loop() refuse from now on): every request still known ends as cancelled.
  {
    std::lock_guard<std::mutex> lock(mu_);
    commands.swap(commands_);
    for (auto& s : incoming_) scheduler_.add(std::move(s));
    incoming_.clear();
  }
  for (auto& c : commands) c();  // their callers wait for them; what they queue is cancelled below
  std::vector<Sequence*> left;
  for (const auto& s : scheduler_.running()) left.push_back(s.get());
  for (const auto& s : scheduler_.waiting()) left.push_back(s.get());
  for (Sequence* s : left) remove(s, FinishReason::Cancelled);
}

// One step: schedule -> (propose) -> run -> postprocess -> metrics.
void Engine::step() {
  drop_cancelled();
  std::vector<ScheduledChunk> chunks;
  if (config_.spec.method == SpecMethod::None) {
    chunks = scheduler_.schedule();
  } else {
    int decoding = 0;
    for (const auto& s : scheduler_.running()) decoding += s->generating && s->remaining() == 1;
    chunks = scheduler_.schedule([&](const Sequence& s) { return lookahead(s, decoding); });
  }
  if (!chunks.empty()) {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    std::vector<std::vector<int32_t>> drafts = propose(chunks);
    const auto t1 = Clock::now();
    const StepPlan p = plan(chunks, std::move(drafts));
    const StepOutput out = runner_.run(p.batch, kv_, p.sampling);
    const double proposing = std::chrono::duration<double>(t1 - t0).count(),
                 running = std::chrono::duration<double>(Clock::now() - t1).count();
    counters_.propose_seconds += proposing;
    counters_.run_seconds += running;
    // What speculating costs against a plain decode step (Engine::lookahead), from steps that only decode.
    if (config_.spec.method != SpecMethod::None &&
        std::all_of(chunks.begin(), chunks.end(), [](const ScheduledChunk& c) { return c.count == 1; })) {
      const bool speculated = std::any_of(p.drafts.begin(), p.drafts.end(), [](const auto& d) { return !d.empty(); });
      double& avg = speculated ? spec_step_s_ : plain_step_s_;
      const double t = proposing + running;
      // The first plain decode step (caches cold) is not a fair measure, nor a step 3x the average (one that
      // recorded a graph, say); a step a third of the average replaces an average such a step started.
      const bool fair = speculated || plain_steps_seen_++ > 0;
      if (fair && (avg == 0 || t < avg / 3)) avg = t;
      else if (fair && t < 3 * avg) avg = 0.8 * avg + 0.2 * t;
    }
    postprocess(chunks, p, out);
  } else if (scheduler_.running().empty() && !scheduler_.waiting().empty()) {
    // Nothing runs and nothing will free blocks: the head request cannot fit beside the cached prefixes it
    // would need; submit() rejects requests larger than the whole cache, so this is rare.
    remove(scheduler_.waiting().front().get(), FinishReason::Error, "not enough KV cache blocks for this request");
  }
  publish_metrics();
}

int Engine::lookahead(const Sequence& s, int decoding) const {
  const SpecConfig& spec = config_.spec;
  if (spec.method == SpecMethod::None || !s.request.speculate || decoding > spec.max_batch || s.spec_pause > 0)
    return 0;
  // A plain decode step's cost is measured first, and again every 64 steps (what a step costs drifts with the
  // batch and the context).
  if (spec.weigh_costs && (plain_steps_seen_ < 4 || counters_.steps % 64 == 0)) return 0;
  // The last token of max_tokens is never a draft: a step's verification always adds one token of its own.
  return std::max(0, std::min(spec.tokens, s.request.max_tokens - s.generated() - 1));
}

std::vector<std::vector<int32_t>> Engine::propose(const std::vector<ScheduledChunk>& chunks) {
  std::vector<std::vector<int32_t>> drafts(chunks.size());
  const SpecConfig& spec = config_.spec;
  std::vector<Sequence*> seqs;
  std::vector<int> want;
  std::vector<size_t> at;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ScheduledChunk& c = chunks[i];
    if (c.draft_slots <= 0) continue;
    if (spec.method == SpecMethod::Ngram) {
      drafts[i] = ngram_propose(c.seq->tokens, c.draft_slots, spec.ngram_min, spec.ngram_max, spec.ngram_lookback);
    } else {
      seqs.push_back(c.seq);
      want.push_back(c.draft_slots);
      at.push_back(i);
    }
  }
  if (!seqs.empty()) {
    std::vector<std::vector<int32_t>> got = draft_->propose(seqs, want);
    for (size_t j = 0; j < at.size(); ++j) drafts[at[j]] = std::move(got[j]);
  }
  // A constrained sequence verifies only drafts its grammar allows (each row's mask follows the drafts before it).
  for (size_t i = 0; i < chunks.size(); ++i) {
    grammar::Matcher* m = chunks[i].seq->matcher.get();
    if (!m || drafts[i].empty()) continue;
    size_t ok = 0;
    while (ok < drafts[i].size() && m->accept(drafts[i][ok])) ++ok;
    m->rollback(int(ok));
    drafts[i].resize(ok);
  }
  return drafts;
}

// Cancelled requests free their blocks before anything else runs; a cancelled session generation ends, and
// the session stays (its pending token still runs).
void Engine::drop_cancelled() {
  std::vector<Sequence*> cancelled;
  for (const auto& s : scheduler_.running())
    if (s->stream && s->stream->cancelled()) cancelled.push_back(s.get());
  for (const auto& s : scheduler_.waiting())
    if (s->stream && s->stream->cancelled()) cancelled.push_back(s.get());
  for (Sequence* s : cancelled) end_generation(s, FinishReason::Cancelled);
}

ThreadPool& Engine::grammar_pool() {
  if (!grammar_pool_) {
    const int hw = int(std::max(1u, std::thread::hardware_concurrency()));
    grammar_pool_ = std::make_unique<ThreadPool>(config_.grammar_threads > 0 ? config_.grammar_threads : std::clamp(hw / 2, 1, 8));
  }
  return *grammar_pool_;
}

// The step's batch, and the rows it samples: on the device, the argmax when every row is plain greedy, else the
// whole sampler, and the log-probabilities rows ask for. Only ids and those come back. A sequence with drafts
// runs them after its token, each with a row (Sampler::next_row with the drafts before it as output so far).
Engine::StepPlan Engine::plan(const std::vector<ScheduledChunk>& chunks, std::vector<std::vector<int32_t>> drafts) {
  StepPlan p;
  const int bs = config_.block_size;
  bool all_greedy = true;
  int rows = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const ScheduledChunk& c = chunks[i];
    Sequence* s = c.seq;
    std::vector<int32_t> run(s->tokens.begin() + c.start, s->tokens.begin() + c.start + c.count);
    const bool spec = c.sample && !drafts[i].empty();
    if (spec) run.insert(run.end(), drafts[i].begin(), drafts[i].end());
    add_stream_chunk(p.batch, run, c.start, s->request.kv_policy, s->sink_window, s->blocks, bs,
                     !c.sample ? Logits::None : spec ? Logits::All : Logits::Last);
    if (!c.sample) continue;
    p.sampled.push_back(s);
    p.first_row.push_back(rows);
    rows += spec ? int(run.size()) : 1;
    p.drafts.push_back(spec ? std::move(drafts[i]) : std::vector<int32_t>{});
    all_greedy = all_greedy && s->request.sampling.plain_greedy();
    p.sampling.logprobs = std::max(p.sampling.logprobs, s->request.logprobs);
  }
  if (!all_greedy)
    for (size_t k = 0; k < p.sampled.size(); ++k) {
      const std::vector<int32_t>& d = p.drafts[k];
      for (size_t j = 0; j <= d.size(); ++j)
        p.sampling.rows.push_back(p.sampled[k]->sampler.next_row(
            &p.sampling.penalties, j == 0 ? std::vector<int32_t>{} : std::vector<int32_t>(d.begin(), d.begin() + long(j))));
    }
  // Constrained rows: their grammars' masks, computed while the device runs the step (ModelRunner calls this).
  if (std::any_of(p.sampled.begin(), p.sampled.end(), [](const Sequence* s) { return s->matcher != nullptr; })) {
    const int words = (model_.config().vocab_size + 31) / 32;
    p.sampling.mask_words = words;
    ThreadPool& pool = grammar_pool();
    p.sampling.fill_masks = [sampled = p.sampled, drafts = p.drafts, first = p.first_row, words, &pool](uint32_t* masks) {
      pool.parallel_for(int64_t(sampled.size()), 1, [&](int64_t begin, int64_t end) {
        for (size_t k = size_t(begin); k < size_t(end); ++k) {
          uint32_t* row = masks + int64_t(first[k]) * words;
          const std::vector<int32_t>& d = drafts[k];
          grammar::Matcher* m = sampled[k]->matcher.get();
          if (!m) {
            std::fill(row, row + (d.size() + 1) * size_t(words), ~0u);
            continue;
          }
          for (size_t j = 0; j <= d.size(); ++j) {  // Engine::propose kept only drafts the grammar takes
            m->fill_mask(row + j * size_t(words));
            if (j < d.size()) m->accept(d[j]);
          }
          m->rollback(int(d.size()));
        }
      });
    };
  }
  return p;
}

void Engine::postprocess(const std::vector<ScheduledChunk>& chunks, const StepPlan& p, const StepOutput& out) {
  ++counters_.steps;
  // What each sampled sequence's rows give: its tokens in order, while each equals the draft its row verified
  // (the first that differs is the correction; the last row's is a bonus). A constrained sequence's grammar takes
  // them first, in parallel (a new parse state costs a pushdown step per byte); `bad` marks a row whose token
  // cannot be used (every logit NaN, or the mask allowed nothing), which ends the request after the tokens before.
  struct Picked {
    std::vector<int32_t> tokens;
    std::vector<char> grammar_done;  // per token: the grammar is complete after it
    bool bad = false;
  };
  std::vector<Picked> picked(p.sampled.size());
  auto pick = [&](size_t k) {
    Sequence* s = p.sampled[k];
    const std::vector<int32_t>& d = p.drafts[k];
    Picked& r = picked[k];
    for (size_t j = 0; j <= d.size(); ++j) {
      const int32_t tok = out.ids[size_t(p.first_row[k]) + j];
      if (tok < 0 || (s->matcher && !s->matcher->accept(tok))) {
        r.bad = true;
        break;
      }
      r.tokens.push_back(tok);
      r.grammar_done.push_back(s->matcher && s->matcher->finished());
      if (j == d.size() || tok != d[j]) break;
    }
  };
  if (p.sampling.fill_masks)
    grammar_pool().parallel_for(int64_t(p.sampled.size()), 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) pick(size_t(k));
    });
  else
    for (size_t k = 0; k < p.sampled.size(); ++k) pick(k);

  // Each token goes to its sequence and its stream, up to the first that ends it.
  std::vector<std::pair<Sequence*, FinishReason>> ended;
  std::vector<int> emitted(p.sampled.size(), 0);
  for (size_t k = 0; k < p.sampled.size(); ++k) {
    Sequence* s = p.sampled[k];
    const Picked& r = picked[k];
    FinishReason why = FinishReason::None;
    for (size_t j = 0; j < r.tokens.size() && why == FinishReason::None; ++j) {
      const int32_t tok = r.tokens[j];
      s->sampler.record(tok);
      s->tokens.push_back(tok);
      ++counters_.generated_tokens;
      ++emitted[k];
      Event e;
      e.token = tok;
      if (s->request.logprobs >= 0) {
        const float* lp = out.logprobs.data() + (size_t(p.first_row[k]) + j) * size_t(1 + 2 * p.sampling.logprobs);
        e.logprob = lp[0];
        for (int t = 0; t < s->request.logprobs && lp[1 + 2 * t] >= 0; ++t)
          e.top_logprobs.emplace_back(int32_t(lp[1 + 2 * t]), lp[2 + 2 * t]);
      }
      s->stream->push(std::move(e));
      why = stop_reason(*s, tok, r.grammar_done[j]);
    }
    if (why == FinishReason::None && r.bad) why = FinishReason::Error;
    if (why != FinishReason::None) ended.emplace_back(s, why);
    if (!p.drafts[k].empty()) {
      const std::vector<int32_t>& d = p.drafts[k];
      size_t match = 0;
      while (match < r.tokens.size() && match < d.size() && r.tokens[match] == d[match]) ++match;
      ++counters_.spec_steps;
      counters_.spec_proposed += int64_t(d.size());
      counters_.spec_accepted += std::min<int64_t>(int64_t(match), emitted[k]);
      counters_.spec_emitted += emitted[k];
      // A sequence whose drafts keep failing pauses (see SpecConfig::min_acceptance), then starts afresh.
      s->spec_rate = 0.7f * s->spec_rate + 0.3f * float(match) / float(d.size());
      s->spec_gain = s->spec_gain == 0 ? float(emitted[k]) : 0.7f * s->spec_gain + 0.3f * float(emitted[k]);
      if (s->spec_rate < config_.spec.acceptance_floor() ||
          (config_.spec.weigh_costs && !speculation_pays(s->spec_gain, spec_step_s_, plain_step_s_))) {
        s->spec_pause = config_.spec.pause;
        s->spec_rate = 1.f;
        s->spec_gain = 0.f;
      }
    } else if (s->spec_pause > 0) {
      --s->spec_pause;
    }
  }

  // Every chunk's tokens now have their K/V in the cache, and so do a verifying sequence's accepted drafts (the
  // tokens it emitted but the last); full blocks join the prefix cache, and the blocks of rejected drafts go back.
  std::vector<Sequence*> sessions;
  size_t k = 0;
  for (const ScheduledChunk& c : chunks) {
    Sequence* s = c.seq;
    if (c.start < s->prompt_len) counters_.prompt_tokens += std::min(c.start + c.count, s->prompt_len) - c.start;
    s->computed = c.start + c.count;
    if (c.sample) {
      if (c.draft_slots > 0) {  // the slots past the pending token go back (the next step reserves again)
        s->computed += std::max(0, emitted[k] - 1);
        const KvPolicy& policy = s->request.kv_policy;
        const int pending = policy.is_sink_window() ? s->sink_window.cache_index(s->computed, policy, config_.block_size)
                                                    : s->computed;
        kv_.blocks().truncate(pending + 1, &s->blocks);
        if (draft_) draft_->rollback(*s, s->computed);
      }
      ++k;
    }
    if (!s->is_sink_window() || s->sink_window.evicted_blocks == 0)  // after an eviction the table no longer maps the stream
      kv_.blocks().commit_full_blocks(s->tokens, s->blocks, s->computed);
    if (s->session) sessions.push_back(s);
  }
  for (const auto& [s, why] : ended)
    end_generation(s, why, why == FinishReason::Error ? "the model's logits are all NaN where the request allows tokens: nothing can be sampled" : "");
  // Sessions with nothing left to run are parked with their KV.
  for (Sequence* s : sessions)
    if (!s->generating && s->remaining() == 0) park(s);
}

void Engine::publish_metrics() {
  EngineMetrics m = counters_;
  m.running = int(scheduler_.running().size());
  m.waiting = int(scheduler_.waiting().size());
  m.blocks_free = kv_.blocks().num_free();
  m.blocks_cached_free = kv_.blocks().num_cached_free();
  m.prefix_lookup_tokens = kv_.blocks().lookups();
  m.prefix_hit_tokens = kv_.blocks().hits();
  m.preemptions = scheduler_.preemptions();
  m.sessions = sessions_.size();
  m.session_blocks = sessions_.blocks_held();
  m.graph_replays = int64_t(runner_.graph_replays());
  if (draft_) {
    m.draft_graph_replays = int64_t(draft_->runner().graph_replays());
    m.draft_blocks_total = draft_->kv().blocks().num_blocks();
    m.draft_blocks_free = draft_->kv().blocks().num_free();
  }
  std::lock_guard<std::mutex> lock(mu_);
  metrics_ = m;
}

}  // namespace rill
