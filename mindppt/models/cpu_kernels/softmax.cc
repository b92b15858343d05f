// Fused softmax over the last axis for MindSpore's CPU backend (ops.Custom, func_type="aot"), float32,
// optionally with PPT's proportional attention: softmax(logits + log(size)) with the per-key log sizes
// (B, N) broadcast over heads and queries, in the same pass instead of a log, a cast, an add and a cast.
#include "common.h"

namespace {

using mindppt::SoftmaxRow;

// x (B, ..., M) rows of M; bias (B, M) or null
int Forward(void **params, int *ndims, int64_t **shapes, const float *bias, float *y) {
  const float *x = static_cast<const float *>(params[0]);
  const int64_t width = shapes[0][ndims[0] - 1];
  const int64_t rows = mindppt::NumElements(ndims[0], shapes[0]) / width;
  const int64_t rows_per_batch = rows / shapes[0][0];
  mindppt::ParallelFor(rows, width, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      SoftmaxRow(x + r * width, bias != nullptr ? bias + (r / rows_per_batch) * width : nullptr, y + r * width,
                 width);
  });
  return 0;
}

}  // namespace

// input x; output y like x
extern "C" int MindpptSoftmaxForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  return Forward(params, ndims, shapes, nullptr, static_cast<float *>(params[1]));
}

// inputs x (B, ..., M), size (B, M); output y = softmax(x + log(size)) like x
extern "C" int MindpptSizeSoftmaxForward(int nparam, void **params, int *ndims, int64_t **shapes,
                                         const char **dtypes, void *stream, void *extra) {
  const float *size = static_cast<const float *>(params[1]);
  const int64_t count = mindppt::NumElements(ndims[1], shapes[1]);
  return Forward(params, ndims, shapes, mindppt::LogSizes(size, count), static_cast<float *>(params[2]));
}

// inputs y (the softmax), dy; output dx = y * (dy - sum(dy * y)) per row
extern "C" int MindpptSoftmaxBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  const float *y = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t width = shapes[0][ndims[0] - 1];
  const int64_t rows = mindppt::NumElements(ndims[0], shapes[0]) / width;
  mindppt::ParallelFor(rows, width, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float *yr = y + r * width;
      const float *dyr = dy + r * width;
      float *dxr = dx + r * width;
      float d = 0.0f;
#pragma omp simd reduction(+ : d)
      for (int64_t c = 0; c < width; ++c) d += dyr[c] * yr[c];
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) dxr[c] = yr[c] * (dyr[c] - d);
    }
  });
  return 0;
}
