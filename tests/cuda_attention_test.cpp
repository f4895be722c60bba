// The CUDA attention kernels (prefill, decode and split, over the paged cache) against the CPU backend.
#include "cuda_test_util.h"

namespace rill::test {
namespace {

// Decode tokens alone (one new token each): the decode kernel's grid holds as many splits per sequence as the
// longest context can take, and the sequences around the split boundaries must still get all of theirs. The
// split count is not monotonic in the length (2048 keys: 16 splits of 2 tiles; 2100: 11 of 3), so a grid
// sized from the longest context's own count would drop splits of a shorter one. Also with max_ctx_len above
// every context, as a decode graph passes it; with short contexts only (one split each, no merge kernel); and
// 64 sequences of at most 2048 keys, a grid of more than a wave, which takes the 2-warp kernel (the others
// the 4-warp one).
TEST_F(CudaOps, DecodeAttentionSplitsAtEveryLength) {
  const int bs = 16, hd = 128, heads = 32, kv_heads = 8;
  std::vector<std::vector<int>> batches = {
      {1, 63, 64, 65, 512, 513, 576, 700, 2048, 2100}, {1, 100, 256}, {130, 577, 1000}, {}};
  for (int s = 0; s < 64; ++s)
    batches.back().push_back(std::vector<int>{1, 64, 65, 200, 512, 513, 1000, 2048}[s % 8]);
  for (const auto& ctx : batches) {
    const int S = int(ctx.size());
    int blocks_per = 0, longest = 0, num_blocks = 0;
    for (int c : ctx) {
      blocks_per = std::max(blocks_per, (c + bs - 1) / bs), longest = std::max(longest, c);
      num_blocks += (c + bs - 1) / bs;
    }
    std::vector<int32_t> q_start, token_seq, tables(static_cast<size_t>(S * blocks_per), 0);
    for (int s = 0; s <= S; ++s) q_start.push_back(s);
    for (int s = 0; s < S; ++s) token_seq.push_back(s);
    std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), std::mt19937(21));
    for (int s = 0, next = 0; s < S; ++s)
      for (int b = 0; b < (ctx[size_t(s)] + bs - 1) / bs; ++b)
        tables[size_t(s * blocks_per + b)] = perm[size_t(next++)];
    const int64_t qw = int64_t(heads) * hd;
    const auto q = random_bf16(size_t(S * qw), 22);
    const auto kc = random_bf16(size_t(num_blocks * bs * kv_heads * hd), 23);
    const auto vc = random_bf16(size_t(num_blocks * bs * kv_heads * hd), 24);
    auto run = [&](Backend& b, int max_ctx) {
      AttentionBatch ab;
      ab.num_seqs = ab.num_tokens = S;
      ab.max_blocks_per_seq = blocks_per;
      ab.q_start = put_i32(b, q_start);
      ab.ctx_len = put_i32(b, std::vector<int32_t>(ctx.begin(), ctx.end()));
      ab.block_tables = put_i32(b, tables);
      ab.token_seq = put_i32(b, token_seq);
      ab.max_q_len = 1;
      ab.max_ctx_len = max_ctx;
      ab.host_q_len.assign(size_t(S), 1);
      KvLayer kv;
      kv.k = put(b, kc, {num_blocks, bs, kv_heads, hd});
      kv.v = put(b, vc, {num_blocks, bs, kv_heads, hd});
      Tensor out = b.alloc(b.device() == Device::CPU ? DType::F32 : DType::BF16, {S, qw});
      b.attention(out, put(b, q, {S, qw}), kv, ab, heads, 1.f / std::sqrt(float(hd)), 0);
      return get(b, out);
    };
    const auto want = run(*cpu_, longest);
    for (int max_ctx : {longest, 8192}) {
      const auto got = run(*gpu_, max_ctx);
      for (int s = 0; s < S; ++s)
        EXPECT_LE(rel_max_diff(got.data() + s * qw, want.data() + s * qw, size_t(qw)), 1e-2)
            << "context " << ctx[size_t(s)] << " of " << longest << ", max_ctx_len " << max_ctx;
    }
  }
}

struct AttnCase {
  int hd, heads, kv_heads, sliding_window;
  bool sinks;
};

class CudaAttention : public CudaOps, public testing::WithParamInterface<AttnCase> {};

// Four sequences in one flat batch: a 37-token prefill, a 1-token decode at 700 keys (several splits), a
// 5-token chunk after 290 cached tokens and a chunk of `chunk` tokens after 600 - chunk (prompts of 16+
// tokens take the tensor-core kernel at head_dim 64 and 128: 300 tokens make two of its 256-row blocks, the
// second partial; 120 make the batch take its 128-row blocks); paged over shuffled blocks. The GPU in bf16
// (its tensor-core and split kernels), and in float32 mode (f32 q and cache: the split kernel for every
// route).
void check_attention(Backend& cpu, Backend& gpu, DType gpu_dtype, const AttnCase& c, double tol, int chunk) {
  const int bs = 16, num_blocks = 160;
  const std::vector<int> q_len = {37, 1, 5, chunk}, ctx = {37, 700, 295, 600};
  const int n = 43 + chunk, S = 4;
  std::vector<int32_t> q_start = {0}, token_seq, hole_end, sinks;
  int max_blocks = 0;
  for (int s = 0; s < S; ++s) {
    q_start.push_back(q_start.back() + q_len[size_t(s)]);
    max_blocks = std::max(max_blocks, (ctx[size_t(s)] + bs - 1) / bs);
    sinks.push_back(c.sinks && s > 0 ? 4 : 0);
    for (int t = 0; t < q_len[size_t(s)]; ++t) {
      token_seq.push_back(s);
      const int self = ctx[size_t(s)] - q_len[size_t(s)] + t;
      hole_end.push_back(c.sinks && s > 0 ? std::min(self, 40 + t) : 0);
    }
  }
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937(11));
  std::vector<int32_t> tables(size_t(S * max_blocks), 0);
  int next = 0;
  for (int s = 0; s < S; ++s)
    for (int b = 0; b < (ctx[size_t(s)] + bs - 1) / bs; ++b) tables[size_t(s * max_blocks + b)] = perm[size_t(next++)];
  const int64_t qw = int64_t(c.heads) * c.hd;
  const auto q = random_bf16(size_t(n * qw), 12), q_sink = random_bf16(size_t(n * qw), 13);
  const auto kcache = random_bf16(size_t(num_blocks * bs * c.kv_heads * c.hd), 14);
  const auto vcache = random_bf16(size_t(num_blocks * bs * c.kv_heads * c.hd), 15);

  auto run = [&](Backend& b) {
    AttentionBatch ab;
    ab.num_seqs = S;
    ab.num_tokens = n;
    ab.max_blocks_per_seq = max_blocks;
    ab.q_start = put_i32(b, q_start);
    ab.ctx_len = put_i32(b, std::vector<int32_t>(ctx.begin(), ctx.end()));
    ab.block_tables = put_i32(b, tables);
    ab.token_seq = put_i32(b, token_seq);
    ab.max_q_len = std::max(37, chunk);
    ab.max_ctx_len = 700;
    if (c.sinks) {
      ab.sinks = put_i32(b, sinks);
      ab.hole_end = put_i32(b, hole_end);
    }
    KvLayer kv;
    kv.k = put(b, kcache, {num_blocks, bs, c.kv_heads, c.hd}, gpu_dtype);
    kv.v = put(b, vcache, {num_blocks, bs, c.kv_heads, c.hd}, gpu_dtype);
    Tensor out = b.alloc(b.device() == Device::CPU ? DType::F32 : gpu_dtype, {n, qw});
    b.attention(out, put(b, q, {n, qw}, gpu_dtype), kv, ab, c.heads, 1.f / std::sqrt(float(c.hd)),
                c.sliding_window, c.sinks ? put(b, q_sink, {n, qw}, gpu_dtype) : Tensor{});
    return get(b, out);
  };
  const auto a = run(cpu), g = run(gpu);
  EXPECT_LE(rel_max_diff(g.data(), a.data(), a.size()), tol) << "chunk of " << chunk << " tokens";
}

TEST_P(CudaAttention, MatchesCpu) {
  for (int chunk : {300, 120}) check_attention(*cpu_, *gpu_, DType::BF16, GetParam(), 1e-2, chunk);
}

TEST_P(CudaAttention, Float32ModeMatchesCpu) {
  auto gpu32 = make_backend("cuda", 0, "float32");
  ASSERT_EQ(gpu32->kv_dtype(), DType::F32);
  check_attention(*cpu_, *gpu32, DType::F32, GetParam(), 1e-5, 300);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention,
                         testing::Values(AttnCase{16, 4, 2, 0, false}, AttnCase{64, 8, 2, 0, false},
                                         AttnCase{128, 32, 8, 0, false}, AttnCase{128, 12, 1, 0, false},
                                         AttnCase{32, 4, 4, 100, false}, AttnCase{64, 8, 2, 100, false},
                                         AttnCase{128, 8, 8, 70, false}, AttnCase{64, 8, 2, 0, true},
                                         AttnCase{128, 28, 4, 0, true}),
                         [](const auto& info) {
                           const AttnCase& c = info.param;
                           return "hd" + std::to_string(c.hd) + "_h" + std::to_string(c.heads) + "_kv" +
                                  std::to_string(c.kv_heads) + (c.sliding_window ? "_window" : "") +
                                  (c.sinks ? "_sinks" : "");
                         });

}  // namespace
}  // namespace rill::test
