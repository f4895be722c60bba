#include "core/error.h"
#include "kv/kv_cache.h"
#include "model/batch.h"
#include "test_util.h"

namespace rill::test {
namespace {

TEST(BlockPool, AllocateReleaseRefCount) {
  BlockPool pool(3);
  const int a = pool.allocate(), b = pool.allocate(), c = pool.allocate();
  EXPECT_EQ(pool.allocate(), -1);
  EXPECT_EQ(pool.num_free(), 0);
  pool.retain(b);
  pool.release(b);
  EXPECT_EQ(pool.num_free(), 0);
  pool.release(b);
  EXPECT_EQ(pool.num_free(), 1);
  EXPECT_EQ(pool.allocate(), b);  // most recently freed first
  pool.release(a);
  pool.release(b);
  pool.release(c);
  EXPECT_EQ(pool.num_free(), 3);
  EXPECT_THROW(pool.release(a), Error);
}

TEST(BlockTable, ReserveIsAllOrNothing) {
  BlockPool pool(4);
  BlockTable t;
  EXPECT_TRUE(t.reserve(17, 16, pool));  // 2 blocks
  EXPECT_EQ(t.blocks.size(), 2u);
  EXPECT_TRUE(t.reserve(32, 16, pool));  // still 2
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_FALSE(t.reserve(65, 16, pool));  // needs 5 in all: refuses, allocates nothing
  EXPECT_EQ(pool.num_free(), 2);
  EXPECT_EQ(t.slot(17, 16), t.blocks[1] * 16 + 1);
  t.release_all(pool);
  EXPECT_EQ(pool.num_free(), 4);
}

TEST(Batch, FlatLayout) {
  Batch b;
  b.add_sequence({5, 6, 7}, 0, 0, {3}, 4, true);
  b.add_sequence({9}, 10, 10, {0, 1, 2}, 4, false);
  EXPECT_EQ(b.q_start, (std::vector<int32_t>{0, 3, 4}));
  EXPECT_EQ(b.ctx_len, (std::vector<int32_t>{3, 11}));
  EXPECT_EQ(b.slots, (std::vector<int32_t>{12, 13, 14, 2 * 4 + 2}));
  EXPECT_EQ(b.logit_rows, (std::vector<int32_t>{0, 1, 2, 3}));
}

}  // namespace
}  // namespace rill::test
