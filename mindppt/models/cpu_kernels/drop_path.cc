// Drop path for MindSpore's CPU backend (ops.Custom, func_type="aot"), float32: each sample of a batch
// multiplied by its own factor (0 or 1 / keep_prob). MindSpore's CPU Mul broadcasting a (B, 1, 1) mask took
// about four times a copy's time.
#include "common.h"

// x (B, ...), scale (B, 1, ...) -> y = x * scale[b] for every element of sample b (also the gradient for x)
extern "C" int MindpptScaleSamples(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  const float *x = static_cast<const float *>(params[0]);
  const float *scale = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t samples = shapes[0][0], size = mindppt::NumElements(ndims[0] - 1, shapes[0] + 1);
  mindppt::ParallelFor(samples, size, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float s = scale[b];
      const float *in = x + b * size;
      float *out = y + b * size;
#pragma omp simd
      for (int64_t i = 0; i < size; ++i) out[i] = in[i] * s;
    }
  });
  return 0;
}
