// Fused LayerNorm over the last axis for MindSpore's CPU backend (ops.Custom, func_type="aot"), float32.
// MindSpore's CPU LayerNorm took 20x PyTorch's time on DeiT-S shapes; this is one read of the row for
// the statistics (sums in double) and one pass to write it. The backward recomputes mean and 1/std from
// x instead of keeping them, and sums the weight and bias gradients per thread.
#include "common.h"

namespace {

struct Moments {
  float mean, rstd;
};

inline Moments RowMoments(const float *x, int64_t width, float eps) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < width; ++c) sum += x[c];
  const double mean = sum / width;
  double squares = 0.0;
#pragma omp simd reduction(+ : squares)
  for (int64_t c = 0; c < width; ++c) {
    const double d = x[c] - mean;
    squares += d * d;
  }
  return {static_cast<float>(mean), static_cast<float>(1.0 / std::sqrt(squares / width + eps))};
}

}  // namespace

// inputs x (..., C), weight (C), bias (C), eps (1); output y like x
extern "C" int MindpptLayerNormForward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                       void *stream, void *extra) {
  const float *x = static_cast<const float *>(params[0]);
  const float *weight = static_cast<const float *>(params[1]);
  const float *bias = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  const int64_t width = shapes[0][ndims[0] - 1];
  const int64_t rows = mindppt::NumElements(ndims[0], shapes[0]) / width;
  mindppt::ParallelFor(rows, width, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float *xr = x + r * width;
      float *yr = y + r * width;
      const Moments m = RowMoments(xr, width, eps);
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) yr[c] = (xr[c] - m.mean) * m.rstd * weight[c] + bias[c];
    }
  });
  return 0;
}

// inputs x, weight, eps, dy; outputs dx (like x), dweight (C), dbias (C)
extern "C" int MindpptLayerNormBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                        void *stream, void *extra) {
  const float *x = static_cast<const float *>(params[0]);
  const float *weight = static_cast<const float *>(params[1]);
  const float eps = *static_cast<const float *>(params[2]);
  const float *dy = static_cast<const float *>(params[3]);
  float *dx = static_cast<float *>(params[4]);
  float *dweight = static_cast<float *>(params[5]);
  float *dbias = static_cast<float *>(params[6]);
  const int64_t width = shapes[0][ndims[0] - 1];
  const int64_t rows = mindppt::NumElements(ndims[0], shapes[0]) / width;
  const unsigned threads = mindppt::NumThreads();
  std::vector<double> partial(2 * width * threads, 0.0);  // per thread: dweight, then dbias
  mindppt::ParallelFor(rows, 2 * width, [=, &partial](unsigned t, int64_t begin, int64_t end) {
    double *dw = partial.data() + 2 * width * t;
    double *db = dw + width;
    std::vector<float> xhat(width);
    for (int64_t r = begin; r < end; ++r) {
      const float *xr = x + r * width;
      const float *dyr = dy + r * width;
      float *dxr = dx + r * width;
      const Moments m = RowMoments(xr, width, eps);
      double mean_g = 0.0, mean_gx = 0.0;  // means of dy * weight and of dy * weight * xhat
#pragma omp simd reduction(+ : mean_g, mean_gx)
      for (int64_t c = 0; c < width; ++c) {
        const float xh = (xr[c] - m.mean) * m.rstd;
        const float g = dyr[c] * weight[c];
        xhat[c] = xh;
        mean_g += g;
        mean_gx += g * xh;
        dw[c] += dyr[c] * xh;
        db[c] += dyr[c];
      }
      const float a = static_cast<float>(mean_g / width), b = static_cast<float>(mean_gx / width);
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) dxr[c] = m.rstd * (dyr[c] * weight[c] - a - xhat[c] * b);
    }
  });
  for (int64_t c = 0; c < width; ++c) {
    double w = 0.0, b = 0.0;
    for (unsigned t = 0; t < threads; ++t) {
      w += partial[2 * width * t + c];
      b += partial[2 * width * t + width + c];
    }
    dweight[c] = static_cast<float>(w);
    dbias[c] = static_cast<float>(b);
  }
  return 0;
}
