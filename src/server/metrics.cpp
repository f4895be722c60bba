#include "server/metrics.h"

namespace rill {

void Histogram::observe(double v) {
  for (size_t i = 0; i < kBounds.size(); ++i)
    if (v <= kBounds[i]) ++counts_[i];
  ++count_;
  sum_ += v;
}

void Histogram::render(std::ostringstream& out, const std::string& name, const std::string& help) const {
  out << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
  for (size_t i = 0; i < kBounds.size(); ++i)
    out << name << "_bucket{le=\"" << kBounds[i] << "\"} " << counts_[i] << "\n";
  out << name << "_bucket{le=\"+Inf\"} " << count_ << "\n"
      << name << "_sum " << sum_ << "\n"
      << name << "_count " << count_ << "\n";
}

void ServerMetrics::first_token(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.observe(seconds);
}

void ServerMetrics::between_tokens(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  itl_.observe(seconds);
}

void ServerMetrics::request_done(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  e2e_.observe(seconds);
}

void ServerMetrics::response(int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++responses_by_status_[status];
}

std::string ServerMetrics::render(const EngineMetrics& m) const {
  std::ostringstream out;
  auto metric = [&](const char* type, const char* name, const char* help, double v) {
    out << "# HELP " << name << " " << help << "\n# TYPE " << name << " " << type << "\n"
        << name << " " << v << "\n";
  };
  auto gauge = [&](const char* name, const char* help, double v) { metric("gauge", name, help, v); };
  auto counter = [&](const char* name, const char* help, double v) { metric("counter", name, help, v); };
  gauge("rill_requests_running", "Requests being generated.", m.running);
  gauge("rill_requests_waiting", "Requests waiting for admission.", m.waiting);
  gauge("rill_kv_blocks_total", "KV cache blocks.", m.blocks_total);
  gauge("rill_kv_blocks_used", "KV cache blocks held by requests.", m.blocks_total - m.blocks_free);
  gauge("rill_kv_blocks_free", "KV cache blocks free (including cached prefixes nobody uses).",
        m.blocks_free);
  gauge("rill_kv_blocks_cached_free", "Free blocks that still hold a reusable cached prefix.",
        m.blocks_cached_free);
  gauge("rill_prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / prompt tokens looked up.",
        m.prefix_lookup_tokens ? double(m.prefix_hit_tokens) / double(m.prefix_lookup_tokens) : 0.0);
  counter("rill_prefix_cache_queries_tokens_total", "Prompt tokens looked up in the prefix cache.",
          double(m.prefix_lookup_tokens));
  counter("rill_prefix_cache_hits_tokens_total", "Prompt tokens found in the prefix cache.",
          double(m.prefix_hit_tokens));
  counter("rill_prompt_tokens_total", "Prompt tokens computed (cached ones excluded).",
          double(m.prompt_tokens));
  counter("rill_generation_tokens_total", "Tokens generated.", double(m.generated_tokens));
  counter("rill_requests_finished_total", "Engine requests finished (any reason).",
          double(m.requests_finished));
  counter("rill_preemptions_total", "Sequences preempted for lack of KV blocks.", double(m.preemptions));
  counter("rill_engine_steps_total", "Engine steps (forward passes).", double(m.steps));
  gauge("rill_sessions", "Streaming sessions open.", m.sessions);
  gauge("rill_session_kv_blocks", "KV blocks held by streaming sessions.", m.session_blocks);
  counter("rill_sessions_expired_total", "Sessions deleted after --session-ttl idle.",
          double(m.sessions_expired));
  counter("rill_spec_verifications_total", "Speculative decoding: sequence steps that verified drafts.",
          double(m.spec_steps));
  counter("rill_spec_draft_tokens_total", "Speculative decoding: draft tokens proposed.", double(m.spec_proposed));
  counter("rill_spec_accepted_tokens_total", "Speculative decoding: draft tokens accepted.",
          double(m.spec_accepted));
  counter("rill_spec_emitted_tokens_total",
          "Speculative decoding: tokens the verifications emitted (accepted drafts, corrections, bonus tokens).",
          double(m.spec_emitted));
  gauge("rill_spec_acceptance_rate", "Draft tokens accepted / proposed.",
        m.spec_proposed ? double(m.spec_accepted) / double(m.spec_proposed) : 0.0);
  gauge("rill_spec_mean_accepted_length", "Tokens emitted per verification (1 + accepted drafts).",
        m.spec_steps ? double(m.spec_emitted) / double(m.spec_steps) : 0.0);
  if (m.draft_blocks_total > 0) {
    gauge("rill_spec_draft_kv_blocks_total", "The draft model's KV cache blocks.", m.draft_blocks_total);
    gauge("rill_spec_draft_kv_blocks_used", "The draft model's KV blocks held by sequences.",
          m.draft_blocks_total - m.draft_blocks_free);
  }
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.render(out, "rill_time_to_first_token_seconds", "Time from request to its first token.");
  itl_.render(out, "rill_inter_token_latency_seconds", "Time between consecutive tokens of a request.");
  e2e_.render(out, "rill_e2e_request_latency_seconds", "Time from request to its last token.");
  out << "# HELP rill_http_responses_total HTTP responses by status.\n# TYPE rill_http_responses_total "
         "counter\n";
  for (const auto& [status, n] : responses_by_status_)
    out << "rill_http_responses_total{status=\"" << status << "\"} " << n << "\n";
  return out.str();
}

}  // namespace rill
