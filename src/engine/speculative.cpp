#include "engine/speculative.h"

#include <algorithm>

#include "core/error.h"

namespace rill {

SpecMethod parse_spec_method(const std::string& name, const std::string& what) {
  if (name == "none" || name == "off") return SpecMethod::None;
  if (name == "draft") return SpecMethod::Draft;
  if (name == "ngram") return SpecMethod::Ngram;
  throw Error(what + ": unknown method '" + name + "' (expected none, draft or ngram)");
}

const char* spec_method_name(SpecMethod m) {
  switch (m) {
    case SpecMethod::Draft:
      return "draft";
    case SpecMethod::Ngram:
      return "ngram";
    default:
      return "none";
  }
}

void SpecConfig::validate(int target_vocab) const {
  if (method == SpecMethod::None) return;
  RILL_CHECK(tokens >= 1 && tokens <= 16, "--spec-tokens: must be 1 to 16 (got " + std::to_string(tokens) + ")");
  RILL_CHECK(max_batch >= 1, "--spec-max-batch: must be at least 1 (got " + std::to_string(max_batch) + ")");
  if (method == SpecMethod::Ngram) {
    RILL_CHECK(ngram_min >= 1 && ngram_min <= ngram_max, "spec: the n-gram sizes must satisfy 1 <= min <= max");
    RILL_CHECK(ngram_lookback > ngram_max, "spec: the n-gram lookback must exceed the largest n-gram");
    return;
  }
  RILL_CHECK(draft != nullptr, "--draft-model: --spec draft needs a draft model");
  // The draft may have a padded table smaller or larger than the target's; the ids it proposes must be ids the
  // target knows, and the target's tokens ids the draft can embed.
  RILL_CHECK(draft->config().vocab_size == target_vocab,
             "--draft-model: its vocabulary has " + std::to_string(draft->config().vocab_size) +
                 " tokens; the model's has " + std::to_string(target_vocab) + " (a draft must share the tokenizer)");
}

std::vector<int32_t> ngram_propose(const std::vector<int32_t>& tokens, int k, int min_n, int max_n, int lookback) {
  const int64_t len = int64_t(tokens.size());
  const int64_t lo = std::max<int64_t>(0, len - lookback);
  for (int n = max_n; n >= min_n; --n) {
    if (len < n + 1) continue;
    const int32_t* suffix = tokens.data() + (len - n);
    // The most recent earlier occurrence: start i with i + n < len, scanning back from the end.
    for (int64_t i = len - n - 1; i >= lo; --i) {
      if (tokens[size_t(i)] != suffix[0] || !std::equal(suffix, suffix + n, tokens.data() + i)) continue;
      const int64_t from = i + n, to = std::min<int64_t>(len, from + k);
      return std::vector<int32_t>(tokens.begin() + from, tokens.begin() + to);
    }
  }
  return {};
}

void add_stream_chunk(Batch& batch, const std::vector<int32_t>& new_tokens, int64_t start, const KvPolicy& policy,
                      const SinkWindowState& window, const std::vector<int32_t>& table, int block_size,
                      Logits logits) {
  int index = int(start);
  SinkWindowView view;
  if (policy.is_sink_window()) {
    index = window.cache_index(start, policy, block_size);
    view = window.view(start, int(new_tokens.size()), policy, block_size);
  }
  batch.add_sequence(new_tokens, int(start), index, table, block_size, logits, view);
}

DraftProposer::DraftProposer(Model& draft, int num_blocks, int block_size, int max_batch_tokens)
    : model_(draft),
      kv_(draft.backend(), draft.config(), num_blocks, block_size),
      runner_(draft),
      max_batch_tokens_(std::max(1, max_batch_tokens)) {}

std::vector<std::vector<int32_t>> DraftProposer::propose(const std::vector<Sequence*>& seqs,
                                                         const std::vector<int>& k) {
  const int bs = kv_.block_size();
  BlockManager& blocks = kv_.blocks();
  std::vector<std::vector<int32_t>> out(seqs.size());
  std::vector<char> live(seqs.size(), 0);
  // Grows s's draft table to run n tokens from its computed ones; false (and the state dropped, its blocks back)
  // when the draft cache is full.
  auto reserve = [&](size_t i, int n) {
    Sequence& s = *seqs[i];
    DraftState& d = *s.draft;
    const KvPolicy& p = s.request.kv_policy;
    const int entries = p.is_sink_window() ? d.window.prepare(d.computed, n, p, blocks, &d.table) : d.computed + n;
    if (blocks.grow(entries, &d.table)) return true;
    s.draft.reset();
    live[i] = 0;
    return false;
  };
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sequence& s = *seqs[i];
    if (k[i] <= 0) continue;
    if (!s.draft) s.draft = std::make_unique<DraftState>(&blocks);
    const int len = int(s.tokens.size());
    if (s.draft->computed >= len) rollback(s, len - 1);  // the last token must run: its logits give the draft
    live[i] = 1;
  }
  // The usual step: dense sequences a few tokens behind (those accepted since their last proposal). Each runs
  // the same number of tokens (a sequence fewer behind runs its last ones again: the same K/V), then K - 1 more
  // steps each fed the last one's pick, as one chain (ModelRunner::chain: one graph, one read back).
  {
    int behind = 0, most = 0;
    bool usual = true;
    for (size_t i = 0; i < seqs.size() && usual; ++i) {
      if (!live[i]) continue;
      const Sequence& s = *seqs[i];
      usual = !s.is_sink_window() && int(s.tokens.size()) - s.draft->computed <= 4;
      behind = std::max(behind, int(s.tokens.size()) - s.draft->computed);
      most = std::max(most, k[i]);
    }
    for (size_t i = 0; i < seqs.size() && usual; ++i)
      if (live[i]) usual = int(seqs[i]->tokens.size()) >= behind;
    if (usual && behind > 0 && most > 0) {
      std::vector<size_t> in;
      for (size_t i = 0; i < seqs.size(); ++i) {
        if (!live[i]) continue;
        DraftState& d = *seqs[i]->draft;
        d.computed = int(seqs[i]->tokens.size()) - behind;
        if (reserve(i, behind + most - 1)) in.push_back(i);
      }
      if (in.empty()) return out;
      Batch first;
      std::vector<Batch> later(size_t(most - 1));
      for (size_t i : in) {
        const Sequence& s = *seqs[i];
        const DraftState& d = *s.draft;
        add_stream_chunk(first, std::vector<int32_t>(s.tokens.end() - behind, s.tokens.end()), d.computed,
                         s.request.kv_policy, d.window, d.table, bs, Logits::All);
        for (int j = 1; j < most; ++j)
          add_stream_chunk(later[size_t(j - 1)], {0}, d.computed + behind + j - 1, s.request.kv_policy, d.window,
                           d.table, bs, Logits::Last);
      }
      const std::vector<std::vector<int32_t>> ids = runner_.chain(first, later, kv_);
      for (size_t r = 0; r < in.size(); ++r) {
        const size_t i = in[r];
        seqs[i]->draft->computed += behind + most - 1;
        for (int j = 0; j < k[i]; ++j) {
          const int32_t id = ids[size_t(j)][r];
          if (id < 0) break;
          out[i].push_back(id);
        }
      }
      return out;
    }
  }
  // Otherwise step by step. Catch up: every sequence's tokens the draft has not seen, in steps of at most
  // max_batch_tokens tokens (a sink window's in chunks its window allows); a sequence's last chunk gives its first
  // draft.
  for (;;) {
    struct Chunk {
      size_t i;
      int n;
      bool last;
    };
    std::vector<Chunk> chunks;
    int budget = max_batch_tokens_;
    for (size_t i = 0; i < seqs.size() && budget > 0; ++i) {
      if (!live[i]) continue;
      Sequence& s = *seqs[i];
      const int len = int(s.tokens.size());
      if (s.draft->computed >= len) continue;
      int n = std::min(len - s.draft->computed, budget);
      if (s.is_sink_window()) n = std::min(n, SinkWindowState::max_chunk(s.request.kv_policy));
      if (!reserve(i, n)) continue;
      chunks.push_back({i, n, s.draft->computed + n == len});
      budget -= n;
    }
    if (chunks.empty()) break;
    // When every sequence runs its last few tokens (the usual step: the tokens accepted since the last proposal),
    // all rows get logits, so that the step has the shape a recorded graph replays.
    const bool all_rows = std::all_of(chunks.begin(), chunks.end(),
                                      [&](const Chunk& c) { return c.last && c.n == chunks[0].n && c.n <= 4; });
    Batch b;
    std::vector<size_t> rows;  // sequences whose last chunk ran, and the row of their last token
    std::vector<int> at;
    for (const Chunk& c : chunks) {
      Sequence& s = *seqs[c.i];
      DraftState& d = *s.draft;
      add_stream_chunk(b, std::vector<int32_t>(s.tokens.begin() + d.computed, s.tokens.begin() + d.computed + c.n),
                       d.computed, s.request.kv_policy, d.window, d.table, bs,
                       all_rows ? Logits::All : c.last ? Logits::Last : Logits::None);
      if (c.last) {
        rows.push_back(c.i);
        at.push_back(all_rows ? b.num_tokens() - 1 : int(rows.size()) - 1);
      }
    }
    const StepOutput o = runner_.run(b, kv_);
    for (const Chunk& c : chunks) seqs[c.i]->draft->computed += c.n;
    for (size_t r = 0; r < rows.size(); ++r) {
      const int32_t id = o.ids[size_t(at[r])];
      if (id >= 0) out[rows[r]].push_back(id);
      else live[rows[r]] = 0;
    }
  }
  // Decode: one more draft per step for the sequences that want more.
  for (int step = 1;; ++step) {
    Batch b;
    std::vector<size_t> rows;
    for (size_t i = 0; i < seqs.size(); ++i) {
      if (!live[i] || int(out[i].size()) != step || step >= k[i]) continue;
      if (!reserve(i, 1)) continue;
      Sequence& s = *seqs[i];
      DraftState& d = *s.draft;
      add_stream_chunk(b, {out[i].back()}, d.computed, s.request.kv_policy, d.window, d.table, bs, Logits::Last);
      rows.push_back(i);
    }
    if (rows.empty()) break;
    const StepOutput o = runner_.run(b, kv_);
    for (size_t r = 0; r < rows.size(); ++r) {
      seqs[rows[r]]->draft->computed += 1;
      if (o.ids[r] >= 0) out[rows[r]].push_back(o.ids[r]);
      else live[rows[r]] = 0;
    }
  }
  for (size_t i = 0; i < seqs.size(); ++i)
    if (!live[i]) out[i].clear();
  return out;
}

void DraftProposer::rollback(Sequence& s, int valid) {
  if (!s.draft) return;
  DraftState& d = *s.draft;
  d.computed = std::max(0, std::min(d.computed, valid));
  const KvPolicy& p = s.request.kv_policy;
  const int bs = kv_.block_size();
  // The entries the kept tokens occupy (a sink window's in its table's layout).
  kv_.blocks().truncate(p.is_sink_window() ? d.window.cache_index(d.computed, p, bs) : d.computed, &d.table);
}

}  // namespace rill
