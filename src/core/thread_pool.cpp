#include "core/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace rill {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// How long an idle worker spins before sleeping: long enough to bridge the gap between the ops of
// one forward pass, short enough not to burn a core between requests.
constexpr auto kSpin = std::chrono::microseconds(500);
// How many pauses parallel_for spends waiting for the workers before it yields its core (a few microseconds).
constexpr int kCallerSpins = 2048;

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) {
    if (const char* env = std::getenv("RILL_NUM_THREADS")) num_threads = std::atoi(env);
    if (num_threads <= 0) num_threads = int(std::max(1u, std::thread::hardware_concurrency()));
  }
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool;
  return pool;
}

void ThreadPool::run_chunks() {
  for (;;) {
    const int64_t begin = next_.fetch_add(chunk_, std::memory_order_relaxed);
    if (begin >= n_) return;
    (*fn_)(begin, std::min(n_, begin + chunk_));
  }
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    // Spin briefly for the next job, then sleep.
    const auto deadline = std::chrono::steady_clock::now() + kSpin;
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen && !stop_.load(std::memory_order_relaxed)) {
      cpu_relax();
      if (++spins % 256 == 0 && std::chrono::steady_clock::now() > deadline) {
        std::unique_lock<std::mutex> lock(mu_);
        ++sleeping_;
        wake_.wait(lock, [&] { return stop_.load() || generation_.load(std::memory_order_acquire) != seen; });
        --sleeping_;
        break;
      }
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    run_chunks();
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(1, grain);
  if (workers_.empty() || n <= grain) {
    fn(0, n);
    return;
  }
  // About four chunks per thread balances uneven work without much contention on next_.
  const int64_t chunks = std::min<int64_t>(n / grain, int64_t(size()) * 4);
  fn_ = &fn;
  n_ = n;
  chunk_ = (n + chunks - 1) / chunks;
  next_.store(0, std::memory_order_relaxed);
  pending_.store(int(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_release);
  {
    // A worker that checked generation_ before the increment holds mu_ until it waits, so taking mu_
    // here orders this notify after its wait: no lost wake-up.
    std::lock_guard<std::mutex> lock(mu_);
    if (sleeping_ > 0) wake_.notify_all();
  }
  run_chunks();
  // Spin for the workers' last chunks, then yield: when there are more threads than free cores (two processes, or
  // tests run side by side), a worker may be waiting for this core, and pausing here would only burn its slice.
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < kCallerSpins) cpu_relax();
    else std::this_thread::yield();
  }
  fn_ = nullptr;
}

}  // namespace rill
