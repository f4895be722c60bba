#include "core/error.h"
#include "kv/block_manager.h"
#include "engine/batch.h"
#include "test_util.h"

namespace rill::test {
namespace {

std::vector<int32_t> seq(int n, int start = 100) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[size_t(i)] = start + i;
  return v;
}

TEST(BlockManager, GrowIsAllOrNothingAndReleaseFrees) {
  BlockManager bm(4, 16);
  std::vector<int32_t> t;
  EXPECT_TRUE(bm.grow(17, &t));  // 2 blocks
  EXPECT_EQ(t.size(), 2u);
  EXPECT_TRUE(bm.grow(32, &t));  // still 2
  EXPECT_EQ(bm.num_free(), 2);
  EXPECT_FALSE(bm.grow(65, &t));  // 5 in all: refused, nothing taken
  EXPECT_EQ(bm.num_free(), 2);
  EXPECT_EQ(t.size(), 2u);
  bm.release(&t);
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(bm.num_free(), 4);
  EXPECT_THROW(BlockManager(0, 16), Error);
}

TEST(BlockManager, PrefixReuseInWholeBlocks) {
  BlockManager bm(8, 4);
  const auto a = seq(10);  // blocks: [0..3] [4..7] [8, 9]
  std::vector<int32_t> ta;
  EXPECT_EQ(bm.match_prefix(a, &ta), 0);
  ASSERT_TRUE(bm.grow(10, &ta));
  bm.commit_full_blocks(a, ta, 10);  // registers the two full blocks
  // Same first 9 tokens, then different: reuses both full blocks while `a` still holds them.
  auto b = seq(9);
  b.push_back(7);
  std::vector<int32_t> tb;
  EXPECT_EQ(bm.match_prefix(b, &tb), 8);
  EXPECT_EQ(std::vector<int32_t>(tb.begin(), tb.end()), std::vector<int32_t>(ta.begin(), ta.begin() + 2));
  // An exact 8-token prompt reuses only one block: at least one token must be computed.
  std::vector<int32_t> tc;
  EXPECT_EQ(bm.match_prefix(seq(8), &tc), 4);
  // A different first block matches nothing, even though the second block's tokens are equal.
  auto d = seq(10);
  d[0] = 1;
  std::vector<int32_t> td;
  EXPECT_EQ(bm.match_prefix(d, &td), 0);
  bm.release(&ta);
  bm.release(&tb);
  bm.release(&tc);
  EXPECT_EQ(bm.num_free(), 8);
  EXPECT_EQ(bm.num_cached_free(), 2);  // cached, unreferenced, still reusable
  std::vector<int32_t> te;
  EXPECT_EQ(bm.match_prefix(a, &te), 8);
  bm.release(&te);
  EXPECT_EQ(bm.hits(), 8 + 4 + 8);
}

TEST(BlockManager, EvictsLeastRecentlyUsedWhenFull) {
  BlockManager bm(3, 2);
  const auto a = seq(5), b = seq(5, 500);
  std::vector<int32_t> ta, tb;
  ASSERT_TRUE(bm.grow(5, &ta));  // 3 blocks, 2 full
  bm.commit_full_blocks(a, ta, 5);
  bm.release(&ta);
  EXPECT_EQ(bm.num_free(), 3);
  ASSERT_TRUE(bm.grow(5, &tb));  // needs all 3: evicts a's cached blocks
  bm.release(&tb);
  std::vector<int32_t> again;
  EXPECT_EQ(bm.match_prefix(a, &again), 0);
  bm.release(&again);
  EXPECT_EQ(bm.num_free(), 3);
}

TEST(Batch, FlatLayout) {
  Batch b;
  b.add_sequence({5, 6, 7}, 0, 0, {3}, 4, Logits::All);
  b.add_sequence({9}, 10, 10, {0, 1, 2}, 4, Logits::Last);
  b.add_sequence({1, 2}, 0, 0, {4}, 4, Logits::None);
  EXPECT_EQ(b.q_start, (std::vector<int32_t>{0, 3, 4, 6}));
  EXPECT_EQ(b.ctx_len, (std::vector<int32_t>{3, 11, 2}));
  EXPECT_EQ(b.slots, (std::vector<int32_t>{12, 13, 14, 2 * 4 + 2, 16, 17}));
  EXPECT_EQ(b.logit_rows, (std::vector<int32_t>{0, 1, 2, 3}));
}

}  // namespace
}  // namespace rill::test
