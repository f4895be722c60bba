#include "kv/block_manager.h"

#include <algorithm>

#include "core/error.h"

namespace rill {

BlockManager::BlockManager(int num_blocks, int block_size) : block_size_(block_size), blocks_(size_t(num_blocks)) {
  RILL_CHECK(num_blocks > 0 && block_size > 0, "KV cache needs at least one block of at least one token");
  for (int b = num_blocks - 1; b >= 0; --b) unused_.push_back(b);
}

uint64_t BlockManager::hash_block(uint64_t prev, const int32_t* tokens, int n) {
  uint64_t h = prev ^ 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < n; ++i) {
    h ^= uint64_t(uint32_t(tokens[i])) + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h *= 0xBF58476D1CE4E5B9ull;
  }
  return h == 0 ? 1 : h;  // 0 means "not cached"
}

void BlockManager::retain(int b) {
  Block& blk = blocks_[size_t(b)];
  if (blk.ref == 0 && blk.in_lru) {
    lru_.erase(blk.lru_pos);
    blk.in_lru = false;
  }
  ++blk.ref;
}

int BlockManager::take_fresh() {
  int b;
  if (!unused_.empty()) {
    b = unused_.back();
    unused_.pop_back();
  } else {
    RILL_CHECK(!lru_.empty(), "BlockManager: no free block");
    b = lru_.front();  // evict the least recently used cached block
    lru_.pop_front();
    Block& old = blocks_[size_t(b)];
    old.in_lru = false;
    if (auto it = cached_.find(old.hash); it != cached_.end() && it->second == b) cached_.erase(it);
    old.hash = 0;
    old.tokens.clear();
  }
  blocks_[size_t(b)].ref = 1;
  return b;
}

int BlockManager::match_prefix(const std::vector<int32_t>& tokens, std::vector<int32_t>* table) {
  RILL_CHECK(table->empty(), "match_prefix needs an empty block table");
  const int full = (int(tokens.size()) - 1) / block_size_;  // leave at least one token to compute
  lookup_tokens_ += int64_t(tokens.size());
  uint64_t h = 0;
  int matched = 0;
  for (int k = 0; k < full; ++k) {
    const int32_t* t = tokens.data() + int64_t(k) * block_size_;
    h = hash_block(h, t, block_size_);
    auto it = cached_.find(h);
    if (it == cached_.end()) break;
    const Block& blk = blocks_[size_t(it->second)];
    if (!std::equal(blk.tokens.begin(), blk.tokens.end(), t)) break;  // a hash collision
    retain(it->second);
    table->push_back(it->second);
    matched += block_size_;
  }
  hit_tokens_ += matched;
  return matched;
}

bool BlockManager::grow(int tokens, std::vector<int32_t>* table) {
  const int need = blocks_needed(tokens, int(table->size()));
  if (need > num_free()) return false;
  for (int i = 0; i < need; ++i) table->push_back(take_fresh());
  return true;
}

void BlockManager::commit_full_blocks(const std::vector<int32_t>& tokens, const std::vector<int32_t>& table,
                                      int computed) {
  const int full = std::min<int>(computed / block_size_, int(table.size()));
  uint64_t h = 0;
  for (int k = 0; k < full; ++k) {
    const int32_t* t = tokens.data() + int64_t(k) * block_size_;
    h = hash_block(h, t, block_size_);
    Block& blk = blocks_[size_t(table[size_t(k)])];
    if (blk.hash == h) continue;  // already registered
    if (blk.hash != 0) continue;  // holds another prefix's registration (shared block): leave it
    blk.hash = h;
    blk.tokens.assign(t, t + block_size_);
    cached_.emplace(h, table[size_t(k)]);  // keeps an existing entry for the same prefix
  }
}

void BlockManager::release(std::vector<int32_t>* table) {
  // Release the tail first, so the LRU evicts a sequence's last blocks before its shared prefix.
  for (auto it = table->rbegin(); it != table->rend(); ++it) {
    Block& blk = blocks_[size_t(*it)];
    RILL_CHECK(blk.ref > 0, "BlockManager::release of a free block");
    if (--blk.ref > 0) continue;
    if (blk.hash != 0 && cached_.count(blk.hash) && cached_[blk.hash] == *it) {
      blk.lru_pos = lru_.insert(lru_.end(), *it);
      blk.in_lru = true;
    } else {
      blk.hash = 0;
      blk.tokens.clear();
      unused_.push_back(*it);
    }
  }
  table->clear();
}

void BlockManager::truncate(int tokens, std::vector<int32_t>* table) {
  const size_t keep = size_t(blocks_needed(tokens, 0));
  if (table->size() <= keep) return;
  std::vector<int32_t> tail(table->begin() + long(keep), table->end());
  table->resize(keep);
  release(&tail);
}

}  // namespace rill
