#include "grammar/matcher.h"

#include <algorithm>
#include <cstring>

namespace rill::grammar {

namespace {

constexpr size_t kMaxStackDepth = 4096;   // deeper parses are dropped (a nesting no real output reaches)
constexpr size_t kMaskCacheBytes = size_t(32) << 20;  // per grammar; the caches start over when full
constexpr size_t kMaxStates = 1 << 16, kMaxSteps = 1 << 20;
constexpr size_t kMaxHistory = 256;       // Matcher::rollback reaches at least this far back

void set_bit(uint32_t* words, int32_t id) { words[id >> 5] |= uint32_t(1) << (id & 31); }
bool get_bit(const uint32_t* words, int32_t id) { return (words[id >> 5] >> (id & 31)) & 1; }

std::string state_key(const ParseState& s) {
  std::string key(1, s.complete ? '1' : '0');
  for (const Stack& st : s.stacks) {
    const uint32_t n = uint32_t(st.size());
    key.append(reinterpret_cast<const char*>(&n), sizeof n);
    key.append(reinterpret_cast<const char*>(st.data()), st.size() * sizeof(int32_t));
  }
  return key;
}

// The states met while walking many byte strings from one start, each advanced by each byte at most once: a DFA
// built as it is used, its transitions a dense table. A walk over a vocabulary revisits few states (inside a string,
// one), so most steps are one load instead of a pushdown step. Bytes that the same stacks of a state take (every
// letter, in a word) lead to the same state, so a state is advanced once per such class of bytes.
class LazyDfa {
 public:
  LazyDfa(const CompiledGrammar& g, ParseState start) : g_(g) { intern(std::move(start)); }
  const ParseState& state(int id) const { return states_[size_t(id)].state; }
  // The state after byte b, or -1 when it is dead.
  int step(int id, uint8_t b) {
    const int32_t known = next_[size_t(id) * 256 + b];
    if (known != kUnknown) return known;
    // Which of the state's stacks take b (past 64 stacks, b itself keys the transition).
    const Node& node = states_[size_t(id)];
    const std::vector<Stack>& stacks = node.state.stacks;
    uint64_t sig = 0;
    if (stacks.size() <= 64) {
      for (size_t k = 0; k < stacks.size(); ++k)
        if (g_.grammar().classes[size_t(g_.grammar().elems[size_t(stacks[k].back())].arg)].test(b)) sig |= uint64_t(1) << k;
    } else {
      sig = uint64_t(b) << 56 | 1;
    }
    int nid = -1;
    if (sig != 0) {
      auto it = std::find_if(node.by_sig.begin(), node.by_sig.end(), [&](const auto& e) { return e.first == sig; });
      if (it != node.by_sig.end()) {
        nid = it->second;
      } else {
        ParseState n = g_.advance(node.state, b);
        nid = n.dead() ? -1 : intern(std::move(n));
        states_[size_t(id)].by_sig.emplace_back(sig, nid);  // intern may have moved the nodes
      }
    }
    next_[size_t(id) * 256 + b] = nid;
    return nid;
  }

 private:
  static constexpr int32_t kUnknown = -2;
  struct Node {
    ParseState state;
    std::vector<std::pair<uint64_t, int>> by_sig;  // the stacks that take a byte -> the next state
  };
  int intern(ParseState s) {
    auto [it, added] = ids_.emplace(state_key(s), int(states_.size()));
    if (added) {
      states_.push_back(Node{std::move(s), {}});
      next_.resize(states_.size() * 256, kUnknown);
    }
    return it->second;
  }
  const CompiledGrammar& g_;
  std::vector<Node> states_;
  std::unordered_map<std::string, int> ids_;
  std::vector<int32_t> next_;  // per state, per byte: the next state, -1 (dead) or kUnknown
};

}  // namespace

// ---- Vocabulary ----

Vocabulary::Vocabulary(std::vector<std::string> token_bytes, std::vector<int32_t> end_ids)
    : bytes_(std::move(token_bytes)), end_ids_(std::move(end_ids)) {
  for (int32_t id : end_ids_) RILL_CHECK(id >= 0 && id < size(), "grammar: end token " + std::to_string(id) + " is outside the vocabulary");
  for (int32_t id = 0; id < size(); ++id)
    if (!bytes_[size_t(id)].empty() && !is_end(id)) sorted_.push_back(id);
  std::stable_sort(sorted_.begin(), sorted_.end(), [&](int32_t a, int32_t b) { return bytes_[size_t(a)] < bytes_[size_t(b)]; });
  sorted_offsets_.push_back(0);
  for (int32_t id : sorted_) {
    sorted_text_ += bytes_[size_t(id)];
    sorted_offsets_.push_back(uint32_t(sorted_text_.size()));
  }
}

bool Vocabulary::is_end(int32_t id) const { return std::find(end_ids_.begin(), end_ids_.end(), id) != end_ids_.end(); }

// ---- CompiledGrammar ----

CompiledGrammar::CompiledGrammar(Grammar g, std::shared_ptr<const Vocabulary> vocab)
    : g_(std::move(g)),
      vocab_(std::move(vocab)),
      max_masks_(std::max<size_t>(16, kMaskCacheBytes / (size_t(vocab_->mask_words()) * sizeof(uint32_t) + 64))) {}

void CompiledGrammar::expand(Stack& s, std::vector<Stack>* out, bool* complete) const {
  if (s.empty()) {
    *complete = true;
    return;
  }
  if (s.size() > kMaxStackDepth) return;
  const int32_t top = s.back();
  const Element& e = g_.elems[size_t(top)];
  switch (e.kind) {
    case Element::Bytes:
      out->push_back(s);
      return;
    case Element::End:
      s.pop_back();
      expand(s, out, complete);
      s.push_back(top);
      return;
    case Element::Ref: {
      s.pop_back();
      const bool tail = g_.elems[size_t(top) + 1].kind == Element::End;  // nothing after the call: no frame
      if (!tail) s.push_back(top + 1);
      for (int32_t a : g_.alts[size_t(e.arg)]) {
        s.push_back(a);
        expand(s, out, complete);
        s.pop_back();
      }
      if (!tail) s.pop_back();
      s.push_back(top);
      return;
    }
  }
}

void CompiledGrammar::normalize(std::vector<Stack>* stacks) const {
  if (stacks->size() < 2) return;
  std::sort(stacks->begin(), stacks->end());
  stacks->erase(std::unique(stacks->begin(), stacks->end()), stacks->end());
}

void CompiledGrammar::precompute() const {
  for (size_t p = 0; p < g_.elems.size(); ++p)
    if (g_.elems[p].kind == Element::Bytes) position(int32_t(p));
}

ParseState CompiledGrammar::initial() const {
  ParseState s;
  for (int32_t a : g_.alts[size_t(g_.root)]) {
    Stack st{a};
    expand(st, &s.stacks, &s.complete);
  }
  normalize(&s.stacks);
  return s;
}

ParseState CompiledGrammar::advance(const ParseState& s, uint8_t b) const {
  ParseState n;
  for (const Stack& st : s.stacks) {
    const int32_t top = st.back();
    if (!g_.classes[size_t(g_.elems[size_t(top)].arg)].test(b)) continue;
    Stack t = st;
    t.back() = top + 1;
    expand(t, &n.stacks, &n.complete);
  }
  normalize(&n.stacks);
  return n;
}

ParseState CompiledGrammar::advance(const ParseState& s, const std::string& bytes) const {
  ParseState cur = s;
  for (unsigned char c : bytes) {
    cur = advance(cur, c);
    if (cur.dead()) break;
  }
  return cur;
}

// Walks the sorted vocabulary as a trie from the one-frame stack {pos}: see the top of matcher.h.
CompiledGrammar::PositionTokens CompiledGrammar::compute_position(int32_t pos) const {
  const Vocabulary& v = *vocab_;
  const std::vector<int32_t>& sorted = v.sorted();
  PositionTokens out;
  std::vector<uint32_t> acc(size_t(v.mask_words()), 0);
  bool any = false;
  ParseState start;
  start.stacks.push_back(Stack{pos});
  LazyDfa dfa(*this, std::move(start));
  auto walk = [&](auto&& self, size_t lo, size_t hi, size_t depth, int sid, bool popped) -> void {
    const ParseState& st = dfa.state(sid);
    size_t i = lo;
    for (; i < hi && v.sorted_bytes(i).size() == depth; ++i) {
      if (!st.stacks.empty() || st.complete) {
        set_bit(acc.data(), sorted[i]);
        any = true;
      } else if (popped) {
        out.uncertain.push_back(int32_t(i));
      }
    }
    const bool popped_here = popped || st.complete;  // the rule may end here and its caller take the rest
    ByteSet next;
    for (const Stack& s : st.stacks) {
      const ByteSet& c = g_.classes[size_t(g_.elems[size_t(s.back())].arg)];
      for (int k = 0; k < 4; ++k) next.bits[k] |= c.bits[k];
    }
    while (i < hi) {
      const uint8_t b = uint8_t(v.sorted_bytes(i)[depth]);
      size_t j = i + 1;  // the end of the run of tokens with byte b here: galloping, then a binary search
      for (size_t step = 1; j < hi && uint8_t(v.sorted_bytes(j)[depth]) <= b; step *= 2) j = std::min(hi, j + step);
      {
        size_t lo2 = i + 1, hi2 = j;
        while (lo2 < hi2) {
          const size_t mid = (lo2 + hi2) / 2;
          if (uint8_t(v.sorted_bytes(mid)[depth]) <= b) lo2 = mid + 1;
          else hi2 = mid;
        }
        j = lo2;
      }
      const int ns = next.test(b) ? dfa.step(sid, b) : -1;
      if (ns >= 0) self(self, i, j, depth + 1, ns, popped_here);
      else if (popped_here)
        for (size_t r = i; r < j; ++r) out.uncertain.push_back(int32_t(r));
      i = j;
    }
  };
  walk(walk, 0, sorted.size(), 0, 0, false);
  if (out.uncertain.size() > (sorted.size() + 31) / 32) {  // as a bitmask: smaller
    std::vector<uint32_t> bits((sorted.size() + 31) / 32, 0);
    for (int32_t rank : out.uncertain) set_bit(bits.data(), rank);
    out.uncertain_bits = std::make_shared<const std::vector<uint32_t>>(std::move(bits));
    out.uncertain = {};
  }
  if (!any) return out;
  // Few accepted tokens (a literal's position) are kept as ids: a bitmask per position would be 16 KiB at 128k.
  size_t count = 0;
  for (uint32_t w : acc) count += size_t(__builtin_popcount(w));
  if (count < acc.size() / 2) {
    for (size_t w = 0; w < acc.size(); ++w)
      for (uint32_t bits = acc[w]; bits; bits &= bits - 1) out.accepted_ids.push_back(int32_t(w * 32 + size_t(__builtin_ctz(bits))));
  } else {
    out.accepted_bits = std::make_shared<const std::vector<uint32_t>>(std::move(acc));
  }
  return out;
}

const CompiledGrammar::PositionTokens& CompiledGrammar::position(int32_t pos) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = positions_.find(pos);
    if (it != positions_.end()) return *it->second;
  }
  auto computed = std::make_unique<PositionTokens>(compute_position(pos));
  std::lock_guard<std::mutex> lock(mu_);
  size_t bytes = (computed->accepted_ids.size() + computed->uncertain.size()) * 4;
  // Positions of one kind (a digit, a letter of a format) share their bitmasks.
  for (auto* field : {&computed->accepted_bits, &computed->uncertain_bits}) {
    if (!*field) continue;
    const auto& bits = **field;
    uint64_t h = 1469598103934665603ull;
    for (uint32_t w : bits) h = (h ^ w) * 1099511628211ull;
    bool shared = false;
    for (auto [b, e] = bitmasks_.equal_range(h); b != e && !shared; ++b)
      if (*b->second == bits) *field = b->second, shared = true;
    if (!shared) {
      bitmasks_.emplace(h, *field);
      bytes += bits.size() * 4;
    }
  }
  auto [it, added] = positions_.emplace(pos, std::move(computed));
  if (added) ++stats_.positions, stats_.position_bytes += bytes;
  return *it->second;
}

StateRef CompiledGrammar::intern(const ParseState& s) const {
  std::string key = state_key(s);
  std::lock_guard<std::mutex> lock(mu_);
  auto it = states_.find(key);
  if (it != states_.end()) return it->second;
  if (states_.size() >= kMaxStates) states_.clear();  // held states live on in their matchers
  auto ref = std::make_shared<InternedState>(InternedState{s, next_serial_++});
  states_.emplace(std::move(key), ref);
  return ref;
}

StateRef CompiledGrammar::step(const StateRef& from, int32_t token) const {
  const uint64_t key = from->serial * uint64_t(vocab_->size()) + uint64_t(token);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = steps_.find(key);
    if (it != steps_.end()) {
      ++stats_.step_hits;
      return it->second;
    }
  }
  const ParseState next = advance(from->state, vocab_->bytes(token));
  StateRef ref = next.dead() ? nullptr : intern(next);
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.step_misses;
  if (steps_.size() >= kMaxSteps) steps_.clear();
  steps_.emplace(key, ref);
  return ref;
}

void CompiledGrammar::fill_mask(const StateRef& ref, uint32_t* words) const {
  const size_t n = size_t(vocab_->mask_words());
  std::shared_ptr<const std::vector<uint32_t>> cached;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = masks_.find(ref->serial);
    if (it != masks_.end()) {
      cached = it->second;
      ++stats_.mask_hits;
    }
  }
  if (cached) {
    std::memcpy(words, cached->data(), n * sizeof(uint32_t));
    return;
  }
  const ParseState& s = ref->state;
  std::fill(words, words + n, 0u);
  // The tops' accepted tokens, and the union of their uncertain ones (by rank in the sorted vocabulary).
  const std::vector<int32_t>& sorted = vocab_->sorted();
  std::vector<uint32_t> maybe;
  for (const Stack& st : s.stacks) {
    const PositionTokens& p = position(st.back());
    if (p.accepted_bits)
      for (size_t w = 0; w < n; ++w) words[w] |= (*p.accepted_bits)[w];
    for (int32_t id : p.accepted_ids) set_bit(words, id);
    if (p.uncertain.empty() && !p.uncertain_bits) continue;
    if (maybe.empty()) maybe.assign((sorted.size() + 31) / 32, 0);
    if (p.uncertain_bits)
      for (size_t w = 0; w < maybe.size(); ++w) maybe[w] |= (*p.uncertain_bits)[w];
    for (int32_t rank : p.uncertain) set_bit(maybe.data(), rank);
  }
  // The uncertain tokens no top accepts, in byte order, walked as a trie from the whole state: a prefix the state
  // cannot take rules out every token under it with one step.
  uint64_t checks = 0;
  if (!maybe.empty()) {
    std::vector<int32_t> ranks;
    for (size_t w = 0; w < maybe.size(); ++w)
      for (uint32_t bits = maybe[w]; bits; bits &= bits - 1) {
        const size_t rank = w * 32 + size_t(__builtin_ctz(bits));
        if (!get_bit(words, sorted[rank])) ranks.push_back(int32_t(rank));
      }
    checks = ranks.size();
    // One pass in byte order: a token starts from the state its common prefix with the one before reached.
    LazyDfa dfa(*this, s);
    std::vector<int> at{0};  // at[d]: the state after the previous token's first d bytes
    size_t dead_at = SIZE_MAX;  // the previous token died on its byte dead_at
    std::string_view prev;
    for (int32_t rank : ranks) {
      const std::string_view b = vocab_->sorted_bytes(size_t(rank));
      size_t l = 0;
      const size_t most = std::min(prev.size(), b.size());
      while (l < most && prev[l] == b[l]) ++l;
      if (l > dead_at) continue;  // it shares the prefix that died
      l = std::min(l, at.size() - 1);
      at.resize(l + 1);
      dead_at = SIZE_MAX;
      prev = b;
      for (size_t d = l; d < b.size(); ++d) {
        const int ns = dfa.step(at[d], uint8_t(b[d]));
        if (ns < 0) {
          dead_at = d;
          break;
        }
        at.push_back(ns);
      }
      if (dead_at == SIZE_MAX) set_bit(words, sorted[size_t(rank)]);
    }
  }
  if (s.complete)
    for (int32_t id : vocab_->end_ids()) set_bit(words, id);
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.mask_misses;
  stats_.uncertain_checks += checks;
  if (masks_.size() >= max_masks_) masks_.clear();
  masks_.emplace(ref->serial, std::make_shared<const std::vector<uint32_t>>(words, words + n));
}

CompiledGrammar::CacheStats CompiledGrammar::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

// ---- Matcher ----

Matcher::Matcher(std::shared_ptr<const CompiledGrammar> g) : g_(std::move(g)), state_(g_->intern(g_->initial())) {}

bool Matcher::accept(int32_t token) {
  if (ended_ || token < 0 || token >= g_->vocab().size()) return false;
  StateRef next;
  if (g_->vocab().is_end(token)) {
    if (!complete()) return false;
    next = g_->intern(ParseState{});  // nothing more: the mask is empty
    ended_ = true;
  } else {
    if (g_->vocab().bytes(token).empty()) return false;
    next = g_->step(state_, token);
    if (!next) return false;
  }
  if (history_.size() >= 2 * kMaxHistory) history_.erase(history_.begin(), history_.begin() + kMaxHistory);
  history_.push_back(std::move(state_));
  state_ = std::move(next);
  return true;
}

void Matcher::rollback(int n) {
  RILL_CHECK(n >= 0 && size_t(n) <= history_.size(), "grammar: cannot roll back " + std::to_string(n) + " tokens");
  if (n == 0) return;
  state_ = history_[history_.size() - size_t(n)];
  history_.resize(history_.size() - size_t(n));
  ended_ = false;
}

}  // namespace rill::grammar
