#include "engine/scorer.h"

#include <algorithm>

#include "core/error.h"

namespace rill {

Scorer::Scorer(ModelRunner& runner, KvCache& kv, KvPolicy policy, int max_chunk)
    : runner_(runner), kv_(kv), policy_(policy), max_chunk_(max_chunk) {
  RILL_CHECK(max_chunk > 0, "Scorer: max_chunk must be positive");
  policy_.validate(kv.block_size(), runner.model().config().max_position_embeddings);
}

Scorer::~Scorer() { kv_.blocks().release(&table_); }

int64_t Scorer::visible() const {
  if (!policy_.is_sink_window()) return length_;
  const int bs = kv_.block_size();
  const SinkWindowState last{state_.evictions_for(length_, policy_, bs)};  // what the last token saw
  return last.visible(length_, policy_, bs);
}

void Scorer::feed(const std::vector<int32_t>& tokens, Logits mode, std::vector<float>* logits) {
  const int bs = kv_.block_size();
  const size_t vocab = size_t(runner_.model().config().vocab_size);
  if (logits) logits->clear();
  size_t done = 0;
  while (done < tokens.size()) {
    int n = int(std::min<size_t>(tokens.size() - done, size_t(max_chunk_)));
    SinkWindowView view;
    int entries;
    if (policy_.is_sink_window()) {
      n = std::min(n, SinkWindowState::max_chunk(policy_));
      entries = state_.prepare(length_, n, policy_, kv_.blocks(), &table_);
      view = state_.view(length_, n, policy_, bs);
    } else {
      entries = int(length_) + n;
    }
    RILL_CHECK(kv_.blocks().grow(entries, &table_),
               "the KV cache is full: " + std::to_string(entries) + " entries need " +
                   std::to_string(kv_.blocks().blocks_needed(entries, int(table_.size()))) + " more blocks, " +
                   std::to_string(kv_.blocks().num_free()) + " are free");
    const bool last = done + size_t(n) == tokens.size();
    const Logits m = mode == Logits::All ? Logits::All : (mode == Logits::Last && last ? Logits::Last : Logits::None);
    Batch b;
    const int start_index = policy_.is_sink_window() ? state_.cache_index(length_, policy_, bs) : int(length_);
    b.add_sequence({tokens.begin() + long(done), tokens.begin() + long(done) + n}, int(length_), start_index, table_, bs,
                   m, view);
    const std::vector<float> step = runner_.logits(b, kv_);
    if (logits && m != Logits::None) logits->insert(logits->end(), step.begin(), step.end());
    length_ += n;
    done += size_t(n);
  }
  if (logits && mode == Logits::Last) RILL_CHECK(logits->size() == vocab, "Scorer: no logits");
}

}  // namespace rill
