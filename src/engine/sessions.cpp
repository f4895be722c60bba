#include "engine/sessions.h"

#include <random>

namespace rill {

namespace {
// 64 bits from the OS's entropy source (getrandom on Linux): ids and secrets must not be predictable from the
// ones a client has seen, which a seeded generator's would be.
uint64_t random_u64() {
  std::random_device rd;
  return (uint64_t(rd()) << 32) ^ uint64_t(rd());
}
}  // namespace

Session& SessionTable::create(std::unique_ptr<Sequence> seq, std::string defaults) {
  if (size() >= max_sessions_)
    throw EngineFull("too many sessions: " + std::to_string(size()) + " are open (--max-sessions " +
                     std::to_string(max_sessions_) + "); delete one or wait for one to expire");
  auto s = std::make_unique<Session>();
  do s->id = random_u64();
  while (s->id == 0 || sessions_.count(s->id));  // 0 means "no session" in a Sequence
  s->secret = random_u64();
  s->defaults = std::move(defaults);
  seq->session = s->id;
  seq->generating = false;
  s->parked = std::move(seq);
  Session& out = *s;
  sessions_[s->id] = std::move(s);
  return out;
}

Session& SessionTable::get(uint64_t id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end())
    throw SessionNotFound("no session " + std::to_string(id) + " (deleted, expired, or never created)");
  return *it->second;
}

void SessionTable::erase(uint64_t id) { sessions_.erase(id); }

std::vector<std::unique_ptr<Session>> SessionTable::expire() {
  std::vector<std::unique_ptr<Session>> gone;
  const auto now = Session::Clock::now();
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    const Session& s = *it->second;
    if (s.parked && std::chrono::duration<double>(now - s.last_used).count() > ttl_seconds_) {
      gone.push_back(std::move(it->second));
      it = sessions_.erase(it);
    } else {
      ++it;
    }
  }
  return gone;
}

SessionStatus SessionTable::status(const Session& session, int block_size, size_t bytes_per_token) const {
  const Sequence* s = session.seq();
  SessionStatus st;
  st.id = session.id;
  st.secret = session.secret;
  st.kv_policy = s->request.kv_policy;
  st.tokens = int64_t(s->tokens.size());
  st.pending = int64_t(s->tokens.size()) - s->computed;
  st.tokens_cached = s->computed;
  if (s->is_sink_window() && s->computed > 0) {
    const KvPolicy& p = s->request.kv_policy;
    const SinkWindowState last{s->sink_window.evictions_for(s->computed, p, block_size)};
    st.tokens_cached = last.visible(s->computed, p, block_size);
  }
  st.blocks = int(s->blocks.size());
  st.kv_bytes = size_t(st.blocks) * size_t(block_size) * bytes_per_token;
  st.generating = s->generating;
  st.idle_seconds =
      session.active ? 0 : std::chrono::duration<double>(Session::Clock::now() - session.last_used).count();
  st.defaults = session.defaults;
  return st;
}

int SessionTable::blocks_held() const {
  int n = 0;
  for (const auto& [id, s] : sessions_) n += int(s->seq()->blocks.size());
  return n;
}

}  // namespace rill
