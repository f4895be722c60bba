// Micro-benchmarks of the CPU backend's hot ops (Google Benchmark). Bytes/s counters are the weight
// bytes streamed, comparable with the machine's memory bandwidth.
#include <benchmark/benchmark.h>

#include <cstring>
#include <random>

#include "backend/backend.h"

namespace {

void BM_Linear(benchmark::State& state) {
  const int64_t n = state.range(0), in = state.range(1), out = state.range(2);
  const auto dtype = rill::DType(state.range(3));
  auto backend = rill::make_cpu_backend(0);
  rill::Tensor w = backend->alloc(dtype, {out, in}), x = backend->alloc(rill::DType::F32, {n, in});
  rill::Tensor y = backend->alloc(rill::DType::F32, {n, out});
  std::memset(w.data, 0, w.nbytes());
  for (int64_t i = 0; i < x.numel(); ++i) x.ptr<float>()[i] = 0.5f;
  for (auto _ : state) backend->linear(y, x, w, rill::Tensor{});
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(w.nbytes()));
  state.counters["GFLOP/s"] = benchmark::Counter(double(2 * n * in * out) * double(state.iterations()),
                                                 benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}

// Decode GEMV (batch 1) and prompt GEMM (128 and 256 tokens) on 110M-model and rill-tiny shapes, in bf16 and f32.
BENCHMARK(BM_Linear)
    ->ArgNames({"n", "in", "out", "dtype"})
    ->Args({1, 768, 2048, int(rill::DType::BF16)})
    ->Args({1, 768, 32000, int(rill::DType::BF16)})
    ->Args({1, 768, 2048, int(rill::DType::F32)})
    ->Args({128, 768, 2048, int(rill::DType::BF16)})
    ->Args({256, 768, 768, int(rill::DType::BF16)})
    ->Args({256, 2048, 768, int(rill::DType::BF16)})
    ->Args({256, 384, 1024, int(rill::DType::BF16)})
    ->Args({256, 768, 2048, int(rill::DType::F32)})
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
