// ThreadPool: a fixed set of workers that run one parallel_for at a time. The calling thread takes part,
// so a pool of N threads uses N-1 workers. Not re-entrant: a task must not call parallel_for on the same
// pool. One thread at a time may submit (the engine loop owns the pool).
//
// Decode issues ~100 small parallel ops per token, so waking sleeping workers through a condition
// variable for each would cost more than the ops. Workers therefore spin (with a pause instruction) for
// a short while after each job before they sleep, and the submitter spins on completion.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace rill {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads = 0);  // 0: all hardware threads (or RILL_NUM_THREADS)
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return int(workers_.size()) + 1; }

  // Calls fn(begin, end) over [0, n) split in chunks of at least `grain` items, in parallel.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  static ThreadPool& global();

 private:
  void worker_loop();
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  int sleeping_ = 0;  // guarded by mu_
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};  // workers still running the current job
  // The current job, published by the release increment of generation_.
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
};

}  // namespace rill
