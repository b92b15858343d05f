// Shared pieces of the fused CPU kernels (ops.Custom, func_type="aot"): a vectorisable exp and a
// row-parallel loop. Each kernel file includes this; they are compiled into one library.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace mindppt {

// exp(a) for a in [-87, 87]: Cody-Waite reduction by ln 2 and Cephes' expf polynomial (about 1 ulp).
// Written out because libm's expf keeps the loops from vectorising unless -ffast-math is on, and
// -ffast-math would also drop the inf/nan semantics the callers' clamps rely on.
inline float Exp(float a) {
  const float n = std::floor(a * 1.44269504088896341f + 0.5f);
  const float r = a - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

// softmax of the row x + bias (bias may be null) into y (y may be x). y holds the biased logits first,
// then their exponentials, then the probabilities. softmax.cc and the fused attention of gemm.cc share it,
// so both give the same probabilities.
inline void SoftmaxRow(const float *x, const float *bias, float *y, int64_t width) {
  float peak = -INFINITY;
  if (bias != nullptr) {
#pragma omp simd reduction(max : peak)
    for (int64_t c = 0; c < width; ++c) {
      const float a = x[c] + bias[c];
      y[c] = a;
      peak = a > peak ? a : peak;
    }
  } else {
#pragma omp simd reduction(max : peak)
    for (int64_t c = 0; c < width; ++c) {
      y[c] = x[c];
      peak = x[c] > peak ? x[c] : peak;
    }
  }
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t c = 0; c < width; ++c) {
    const float a = y[c] - peak;
    // exp(-87) is below float's normal range: an exact 0 there, and Exp stays in range
    const float e = Exp(a < -87.0f ? -87.0f : a);
    const float kept = a < -87.0f ? 0.0f : e;
    y[c] = kept;
    total += kept;
  }
  const float inv = 1.0f / total;
#pragma omp simd
  for (int64_t c = 0; c < width; ++c) y[c] *= inv;
}

// log(size[i]) for i < count in a buffer of the calling thread, which the workers of its job read
inline const float *LogSizes(const float *size, int64_t count) {
  thread_local std::vector<float> log_size;
  log_size.resize(count);
  for (int64_t i = 0; i < count; ++i) log_size[i] = std::log(size[i]);
  return log_size.data();
}

inline unsigned NumThreads() {
  static const unsigned threads = [] {
    const char *env = std::getenv("MINDPPT_KERNEL_THREADS");
    const unsigned n = env != nullptr ? static_cast<unsigned>(std::atoi(env)) : std::thread::hardware_concurrency();
    return n < 1 ? 1u : n;
  }();
  return threads;
}

// Spin-wait for up to SpinMicros() (MINDPPT_KERNEL_SPIN_US, default 200) before sleeping: waking a
// sleeping thread on this kind of VM took tens of microseconds per kernel call, most of a small job.
inline int64_t SpinMicros() {
  static const int64_t micros = [] {
    const char *env = std::getenv("MINDPPT_KERNEL_SPIN_US");
    return env != nullptr ? static_cast<int64_t>(std::atoll(env)) : int64_t{200};
  }();
  return micros;
}

// true once done() holds, spinning for at most SpinMicros(); false on time-out
template <typename Done>
bool SpinUntil(Done done) {
  const auto limit = std::chrono::steady_clock::now() + std::chrono::microseconds(SpinMicros());
  for (unsigned i = 1;; ++i) {
    if (done()) return true;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
    if ((i & 63) == 0 && std::chrono::steady_clock::now() > limit) return false;
  }
}

// The worker threads of ParallelFor, started once per process: starting a thread per kernel call cost
// more than the work of many calls at batch 1. Between jobs a worker spins briefly (SpinUntil), then
// sleeps on a condition variable. One job at a time: a kernel called while another one's job runs
// (parallel branches of a graph) does its work inline.
class WorkerPool {
 public:
  static WorkerPool &Get() {
    static std::mutex creation;
    static WorkerPool *pool = nullptr;
    std::lock_guard<std::mutex> guard(creation);
    if (pool == nullptr || pool->pid_ != getpid()) pool = new WorkerPool(NumThreads() - 1);  // a fork has no workers
    return *pool;
  }

  unsigned size() const { return static_cast<unsigned>(workers_); }

  // job(t) for t in [0, size()]: t = 0 on the calling thread. False (nothing run) when another job is running.
  bool Run(const std::function<void(unsigned)> &job) {
    std::unique_lock<std::mutex> running(run_, std::try_to_lock);
    if (!running.owns_lock()) return false;
    bool sleeping;
    {
      std::lock_guard<std::mutex> guard(mutex_);
      job_ = &job;
      pending_.store(workers_, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_release);
      sleeping = sleepers_ > 0;
    }
    if (sleeping) wake_.notify_all();
    job(0);
    if (SpinUntil([this] { return pending_.load(std::memory_order_acquire) == 0; })) return true;
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_.load(std::memory_order_acquire) == 0; });
    return true;
  }

 private:
  explicit WorkerPool(unsigned workers) : workers_(workers), pid_(getpid()) {
    for (unsigned w = 0; w < workers; ++w) std::thread(&WorkerPool::Loop, this, w + 1).detach();
  }

  void Loop(unsigned id) {
    uint64_t seen = 0;
    for (;;) {
      const auto started = [&] { return generation_.load(std::memory_order_acquire) != seen; };
      const std::function<void(unsigned)> *job;
      if (!SpinUntil(started)) {
        std::unique_lock<std::mutex> lock(mutex_);
        ++sleepers_;
        wake_.wait(lock, started);
        --sleepers_;
      }
      {
        std::lock_guard<std::mutex> guard(mutex_);
        seen = generation_.load(std::memory_order_relaxed);
        job = job_;
      }
      (*job)(id);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard<std::mutex> guard(mutex_);
        done_.notify_one();
      }
    }
  }

  const unsigned workers_;
  const pid_t pid_;
  std::mutex run_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(unsigned)> *job_ = nullptr;
  std::atomic<unsigned> pending_{0};
  std::atomic<uint64_t> generation_{0};
  unsigned sleepers_ = 0;
};

// fn(thread, begin, end) over [0, n) split into one contiguous chunk per thread; small jobs run inline
// (waking a worker costs more than they do).
template <typename Fn>
void ParallelFor(int64_t n, int64_t work_per_item, Fn fn) {
  if (NumThreads() < 2 || n < 2 || n * work_per_item < 65536) {
    fn(0u, int64_t{0}, n);
    return;
  }
  WorkerPool &pool = WorkerPool::Get();
  const unsigned threads = pool.size() + 1;
  const int64_t chunk = (n + threads - 1) / threads;
  const std::function<void(unsigned)> job = [&](unsigned t) {
    const int64_t begin = t * chunk, end = begin + chunk < n ? begin + chunk : n;
    if (begin < end) fn(t, begin, end);
  };
  if (!pool.Run(job)) fn(0u, int64_t{0}, n);
}

// y[i] <- gelu(y[i]) for i < n (gelu.cc)
void GeluInPlace(float *y, int64_t n);

// What PPT's compression reads of a block's keys and values, from the qkv projection (B, N, 3C) with H
// heads read in place (compression.cc): keys (B, N, C / H), each token's key summed over the heads (the
// pooling metric: ToMe's mean over heads without the 1 / H its normalisation cancels), and norms (B, N),
// each token's value norm over all C columns; sums in double, rounded once.
void SummariseKeysValues(const float *qkv, int64_t batch, int64_t tokens, int64_t width, int64_t heads, float *keys,
                         float *norms);

inline int64_t NumElements(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

}  // namespace mindppt
