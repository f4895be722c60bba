// BlockManager: the paged KV cache's bookkeeping with automatic prefix reuse. Every full block is keyed
// by a hash of its tokens chained with the previous block's hash; a new sequence reuses each leading
// block whose key and tokens match. Blocks no sequence references keep their cached contents on an LRU
// list until a fresh block is needed. Owned by the engine loop thread; knows nothing about models.
#pragma once

#include <cstdint>
#include <list>
#include <unordered_map>
#include <vector>

namespace rill {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size);

  int block_size() const { return block_size_; }
  int num_blocks() const { return int(blocks_.size()); }
  // Blocks that allocate() could hand out now: never used, or cached but unreferenced.
  int num_free() const { return int(unused_.size() + lru_.size()); }
  int num_cached_free() const { return int(lru_.size()); }

  // Blocks a sequence of `tokens` needs beyond the ones it already holds.
  int blocks_needed(int tokens, int held) const { return std::max(0, (tokens + block_size_ - 1) / block_size_ - held); }

  // Reuses cached blocks for the longest prefix of `tokens` that is cached, in whole blocks, leaving at least
  // one token uncached (the model must run on something to produce logits). Appends the blocks to `table`
  // and returns how many tokens they cover.
  int match_prefix(const std::vector<int32_t>& tokens, std::vector<int32_t>* table);
  // Appends blocks so `table` holds `tokens` entries; all or nothing. Returns false when too few are free.
  bool grow(int tokens, std::vector<int32_t>* table);
  // Registers every block of `table` that `tokens` fills completely (from block `from_block` on) in the prefix
  // cache, so later requests can reuse it. tokens must be the sequence's tokens whose KV is written.
  void commit_full_blocks(const std::vector<int32_t>& tokens, const std::vector<int32_t>& table, int computed);
  // Drops the sequence's references; cached blocks stay reusable until evicted.
  void release(std::vector<int32_t>* table);
  // Releases the blocks of `table` past the first that hold `tokens` entries (speculative tokens rejected).
  void truncate(int tokens, std::vector<int32_t>* table);

  // Prefix-cache statistics: prompt tokens looked up and found.
  int64_t lookups() const { return lookup_tokens_; }
  int64_t hits() const { return hit_tokens_; }

 private:
  struct Block {
    int ref = 0;
    uint64_t hash = 0;  // 0: not in the cache
    std::vector<int32_t> tokens;
    std::list<int>::iterator lru_pos;
    bool in_lru = false;
  };
  static uint64_t hash_block(uint64_t prev, const int32_t* tokens, int n);
  int take_fresh();  // a block with ref 1, evicting the least recently used cached one if needed
  void retain(int b);

  int block_size_;
  std::vector<Block> blocks_;
  std::vector<int> unused_;                    // never cached (or evicted), stack
  std::list<int> lru_;                         // cached, unreferenced; front = least recently used
  std::unordered_map<uint64_t, int> cached_;   // hash -> block
  int64_t lookup_tokens_ = 0, hit_tokens_ = 0;
};

}  // namespace rill
