// SessionTable: the engine's streaming sessions, persistent sequences that live across calls. A session is parked
// with its KV blocks between calls and handed to the scheduler while it prefills appended tokens or generates.
// The table also keeps what the client set for the session's generations (its defaults), so everything about a
// session goes when the session goes: deleted, expired after its idle time, or on shutdown. Owned and used by the
// engine loop thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "engine/sequence.h"
#include "kv/kv_policy.h"

namespace rill {

// The engine cannot take more now: its waiting queue or session table is full, or it is shutting down.
class EngineFull : public Error {
 public:
  using Error::Error;
};
class SessionNotFound : public Error {
 public:
  using Error::Error;
};
class SessionBusy : public Error {
 public:
  using Error::Error;
};

// A streaming session's state, as the API reports it.
struct SessionStatus {
  uint64_t id = 0;
  uint64_t secret = 0;  // random, as the id is: a client names both (the server's "sess-<32 hex digits>")
  KvPolicy kv_policy;
  int64_t tokens = 0;         // tokens seen (appended + generated)
  int64_t tokens_cached = 0;  // tokens whose K/V the model attends to now
  int64_t pending = 0;        // appended tokens not yet prefilled
  int blocks = 0;             // KV blocks held
  size_t kv_bytes = 0;        // memory those blocks hold
  bool generating = false;
  double idle_seconds = 0;
  std::string defaults;  // as given to Engine::create_session
};

struct Session {
  using Clock = std::chrono::steady_clock;
  uint64_t id = 0;      // random (from the OS's entropy), never 0
  uint64_t secret = 0;  // random: with the id, 128 bits a client cannot guess from other sessions' names
  std::unique_ptr<Sequence> parked;  // idle, holding its KV blocks
  Sequence* active = nullptr;        // in the scheduler
  Clock::time_point last_used = Clock::now();
  // The generation parameters a call leaves out, in the client's encoding (the server's: a JSON object of request
  // parameters). The engine keeps them with the session and reads nothing in them.
  std::string defaults;
  Sequence* seq() const { return parked ? parked.get() : active; }
};

class SessionTable {
 public:
  SessionTable(int max_sessions, double ttl_seconds) : max_sessions_(max_sessions), ttl_seconds_(ttl_seconds) {}

  // Adds a parked session holding `seq` (no tokens yet). Throws EngineFull at max_sessions.
  Session& create(std::unique_ptr<Sequence> seq, std::string defaults);
  // Throws SessionNotFound naming the id.
  Session& get(uint64_t id);
  void erase(uint64_t id);
  // Removes the sessions parked for longer than the idle time and returns them (their blocks are still held).
  std::vector<std::unique_ptr<Session>> expire();
  // The status of a session whose cache holds `bytes_per_token` per token in blocks of `block_size`.
  SessionStatus status(const Session& s, int block_size, size_t bytes_per_token) const;

  bool empty() const { return sessions_.empty(); }
  int size() const { return int(sessions_.size()); }
  int blocks_held() const;
  // In id order (random).
  const std::map<uint64_t, std::unique_ptr<Session>>& all() const { return sessions_; }

 private:
  int max_sessions_;
  double ttl_seconds_;
  std::map<uint64_t, std::unique_ptr<Session>> sessions_;
};

}  // namespace rill
