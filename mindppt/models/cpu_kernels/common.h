// Shared pieces of the fused CPU kernels (ops.Custom, func_type="aot"): a vectorisable exp and a
// row-parallel loop. Each kernel file includes this; they are compiled into one library.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
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

inline unsigned NumThreads() {
  static const unsigned threads = [] {
    const char *env = std::getenv("MINDPPT_KERNEL_THREADS");
    const unsigned n = env != nullptr ? static_cast<unsigned>(std::atoi(env)) : std::thread::hardware_concurrency();
    return n < 1 ? 1u : n;
  }();
  return threads;
}

// fn(thread, begin, end) over [0, n) split into one contiguous chunk per thread; small jobs run inline
// (starting a thread costs more than they do).
template <typename Fn>
void ParallelFor(int64_t n, int64_t work_per_item, Fn fn) {
  const unsigned threads = NumThreads();
  if (threads < 2 || n < 2 || n * work_per_item < 65536) {
    fn(0u, int64_t{0}, n);
    return;
  }
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) {
    const int64_t begin = t * chunk, end = begin + chunk < n ? begin + chunk : n;
    if (begin < end) pool.emplace_back(fn, t, begin, end);
  }
  fn(0u, int64_t{0}, chunk < n ? chunk : n);
  for (auto &worker : pool) worker.join();
}

inline int64_t NumElements(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

}  // namespace mindppt
