// Matching a Grammar byte by byte, and the token masks that constrain decoding.
//
// A parse state is a set of stacks (a pushdown automaton run on all alternatives at once, as llama.cpp's grammar
// sampler does): each stack holds grammar positions, its top always a byte class. A byte advances every stack
// whose top class holds it; references push, ends pop, and a reference in tail position replaces its caller's
// frame, so `x*` runs in constant stack depth.
//
// A token mask says which tokens may come next. Checking every token's bytes against the state costs too much at
// a 128k vocabulary, so CompiledGrammar precomputes, once per grammar position (a stack top), what it can without
// the rest of the stack: walking the vocabulary's sorted byte strings as a trie from that position alone, a token
// is *accepted* (its bytes are consumed inside the position's rule, whatever the caller does next), *rejected*,
// or *uncertain* (the rule ends inside the token and the caller decides). A mask is then the union of the tops'
// accepted sets plus the uncertain tokens that the whole state takes, found by walking them in byte order as a
// trie from that state (a prefix it cannot take rules out every token under it at once). Whole masks are cached
// by parse state, so a state seen before (inside a string, say) costs one copy.
//
// Thread rules: a CompiledGrammar is shared (its caches take a mutex; masks are copied outside it, so threads
// filling masks for different sequences run in parallel); a Matcher belongs to one sequence.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "grammar/grammar.h"

namespace rill::grammar {

// The bytes each token stands for in the middle of a text, and which tokens end a generation. A token with no
// bytes (a special or control token) is never allowed by a grammar; the end tokens only when the grammar is done.
class Vocabulary {
 public:
  Vocabulary(std::vector<std::string> token_bytes, std::vector<int32_t> end_ids);
  int size() const { return int(bytes_.size()); }
  int mask_words() const { return (size() + 31) / 32; }
  const std::string& bytes(int32_t id) const { return bytes_[size_t(id)]; }
  const std::vector<int32_t>& end_ids() const { return end_ids_; }
  bool is_end(int32_t id) const;
  // Token ids with bytes, sorted by their bytes (the trie the precomputation walks), and the bytes of the token of
  // each rank in that order, kept one after another: walks in byte order read memory in order.
  const std::vector<int32_t>& sorted() const { return sorted_; }
  std::string_view sorted_bytes(size_t rank) const {
    return std::string_view(sorted_text_).substr(sorted_offsets_[rank], sorted_offsets_[rank + 1] - sorted_offsets_[rank]);
  }

 private:
  std::vector<std::string> bytes_;
  std::vector<int32_t> end_ids_;
  std::vector<int32_t> sorted_;
  std::string sorted_text_;
  std::vector<uint32_t> sorted_offsets_;
};

using Stack = std::vector<int32_t>;  // grammar positions, the top at the back

struct ParseState {
  std::vector<Stack> stacks;  // sorted, unique; every top is a byte class
  bool complete = false;      // the bytes so far are a whole sentence of the grammar
  bool dead() const { return stacks.empty() && !complete; }
};

// A parse state as the caches know it: interned by value, with a serial number that keys its transitions and mask.
struct InternedState {
  ParseState state;
  uint64_t serial = 0;
};
using StateRef = std::shared_ptr<const InternedState>;

// A Grammar ready to constrain one vocabulary. Immutable but for its caches; shared between sequences. The caches
// are bounded: past their bounds they start over, and matchers keep the states they hold.
class CompiledGrammar {
 public:
  CompiledGrammar(Grammar g, std::shared_ptr<const Vocabulary> vocab);
  const Grammar& grammar() const { return g_; }
  const Vocabulary& vocab() const { return *vocab_; }

  // Computes every position's token sets now (they are otherwise computed on first use), so that the thread that
  // compiles a request's grammar pays for it rather than the engine loop.
  void precompute() const;
  ParseState initial() const;
  // The state after byte b (dead when no stack takes it; `complete` then drops too: the sentence ended before).
  ParseState advance(const ParseState& s, uint8_t b) const;
  ParseState advance(const ParseState& s, const std::string& bytes) const;
  // Whether `bytes` is a whole sentence, or a prefix of one.
  bool accepts(const std::string& bytes) const { return advance(initial(), bytes).complete; }
  bool accepts_prefix(const std::string& bytes) const { return !advance(initial(), bytes).dead(); }
  // The tokens allowed after state s, as mask_words() 32-bit words (bit i of word w: token 32w + i).
  void fill_mask(const ParseState& s, uint32_t* words) const { fill_mask(intern(s), words); }

  // The interned forms, as Matcher uses them: a token's step and a state's mask are computed once per state.
  StateRef intern(const ParseState& s) const;
  StateRef step(const StateRef& from, int32_t token) const;  // null when the token's bytes do not fit
  void fill_mask(const StateRef& s, uint32_t* words) const;

  struct CacheStats {
    uint64_t positions = 0, position_bytes = 0, mask_hits = 0, mask_misses = 0, uncertain_checks = 0, step_hits = 0,
             step_misses = 0;
  };
  CacheStats stats() const;

 private:
  struct PositionTokens {
    std::shared_ptr<const std::vector<uint32_t>> accepted_bits;  // a bitmask when many tokens are accepted (shared),
    std::vector<int32_t> accepted_ids;    // else their ids
    std::vector<int32_t> uncertain;  // by rank in Vocabulary::sorted() (byte order), or when many
    std::shared_ptr<const std::vector<uint32_t>> uncertain_bits;  // a bitmask of ranks
  };
  void expand(Stack& s, std::vector<Stack>* out, bool* complete) const;
  void normalize(std::vector<Stack>* stacks) const;
  const PositionTokens& position(int32_t pos) const;
  PositionTokens compute_position(int32_t pos) const;

  Grammar g_;
  std::shared_ptr<const Vocabulary> vocab_;
  size_t max_masks_;  // masks kept: 32 MiB of them
  mutable std::mutex mu_;
  mutable std::unordered_map<int32_t, std::unique_ptr<PositionTokens>> positions_;
  mutable std::unordered_multimap<uint64_t, std::shared_ptr<const std::vector<uint32_t>>> bitmasks_;  // by hash
  mutable std::unordered_map<std::string, StateRef> states_;           // by value
  mutable std::unordered_map<uint64_t, StateRef> steps_;               // by serial * vocab + token; null: dead
  mutable std::unordered_map<uint64_t, std::shared_ptr<const std::vector<uint32_t>>> masks_;  // by serial
  mutable uint64_t next_serial_ = 1;
  mutable CacheStats stats_;
};

// One sequence's progress through a grammar, token by token.
class Matcher {
 public:
  explicit Matcher(std::shared_ptr<const CompiledGrammar> g);
  // Takes a token: false (and no change) when the grammar does not allow it.
  bool accept(int32_t token);
  void fill_mask(uint32_t* words) const { g_->fill_mask(state_, words); }
  // The output so far is a whole sentence; no more bytes can follow (nothing but an end token is allowed).
  bool complete() const { return state_->state.complete || ended_; }
  bool finished() const { return state_->state.stacks.empty(); }
  // Undoes the last n accepted tokens (n <= 256, and no more than were accepted).
  void rollback(int n);
  const CompiledGrammar& grammar() const { return *g_; }

 private:
  std::shared_ptr<const CompiledGrammar> g_;
  StateRef state_;
  std::vector<StateRef> history_;  // the state before each accepted token
  bool ended_ = false;             // an end token was accepted
};

}  // namespace rill::grammar
