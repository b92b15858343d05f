// Layout changes of the ViT for MindSpore's CPU backend (ops.Custom, func_type="aot"), float32: the
// attention's head split and merge, the patch extraction and the token sequence's assembly, as plain
// copies of contiguous runs. Each MindSpore CPU Transpose took twice the time of a copy and kept a
// buffer of about twice its tensor's size alive for the graph's lifetime, per call site.
#include "common.h"

namespace {

inline void Copy(const float *from, float *to, int64_t n) { std::memcpy(to, from, n * sizeof(float)); }

}  // namespace

// inputs qkv (B, N, 3 * H * D), scale (1); outputs q * scale, k, v,
// each (B, H, N, D). The output shape gives H and D.
extern "C" int MindpptSplitQkv(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *stream, void *extra) {
  const float *qkv = static_cast<const float *>(params[0]);
  const float scale = *static_cast<const float *>(params[1]);
  float *out[3] = {static_cast<float *>(params[2]), static_cast<float *>(params[3]), static_cast<float *>(params[4])};
  const int64_t batch = shapes[2][0], heads = shapes[2][1], tokens = shapes[2][2], dim = shapes[2][3];
  const int64_t width = heads * dim;
  mindppt::ParallelFor(batch * tokens, 3 * width, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / tokens, n = row % tokens;
      const float *src = qkv + row * 3 * width;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t offset = ((b * heads + h) * tokens + n) * dim;
        const float *q = src + h * dim;
        float *dst = out[0] + offset;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) dst[d] = q[d] * scale;
        Copy(src + width + h * dim, out[1] + offset, dim);
        Copy(src + 2 * width + h * dim, out[2] + offset, dim);
      }
    }
  });
  return 0;
}

// inputs dq, dk, dv (B, H, N, D), scale (1); output dqkv (B, N, 3 * H * D): the gradient of MindpptSplitQkv
extern "C" int MindpptSplitQkvBackward(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                       void *stream, void *extra) {
  const float *grads[3] = {static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
                           static_cast<const float *>(params[2])};
  const float scale = *static_cast<const float *>(params[3]);
  float *dqkv = static_cast<float *>(params[4]);
  const int64_t batch = shapes[0][0], heads = shapes[0][1], tokens = shapes[0][2], dim = shapes[0][3];
  const int64_t width = heads * dim;
  mindppt::ParallelFor(batch * tokens, 3 * width, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / tokens, n = row % tokens;
      float *dst = dqkv + row * 3 * width;
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t offset = ((b * heads + h) * tokens + n) * dim;
        const float *dq = grads[0] + offset;
        float *to = dst + h * dim;
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) to[d] = dq[d] * scale;
        Copy(grads[1] + offset, dst + width + h * dim, dim);
        Copy(grads[2] + offset, dst + 2 * width + h * dim, dim);
      }
    }
  });
  return 0;
}

// input x (B, P, Q, D); output (B, Q, P, D): axes 1 and 2 swapped (head merge, and its own gradient)
extern "C" int MindpptSwapAxes12(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t batch = shapes[0][0], p = shapes[0][1], q = shapes[0][2], dim = shapes[0][3];
  mindppt::ParallelFor(batch * p, q * dim, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / p, i = row % p;
      for (int64_t j = 0; j < q; ++j) Copy(x + (row * q + j) * dim, y + ((b * q + j) * p + i) * dim, dim);
    }
  });
  return 0;
}

// input images (B, C, H, W); output patches (B * (H / P) * (W / P), C * P * P) in Conv2d weight order
// (channel, row, column); P from the output's width
extern "C" int MindpptPatchify(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                               void *stream, void *extra) {
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t batch = shapes[0][0], channels = shapes[0][1], height = shapes[0][2], width = shapes[0][3];
  const int64_t patch = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(shapes[1][1] / channels))));
  const int64_t rows = height / patch, cols = width / patch;
  mindppt::ParallelFor(batch * rows, cols * channels * patch * patch, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t br = begin; br < end; ++br) {
      const int64_t b = br / rows, r = br % rows;
      for (int64_t c = 0; c < cols; ++c) {
        float *dst = y + (br * cols + c) * channels * patch * patch;
        for (int64_t ch = 0; ch < channels; ++ch)
          for (int64_t i = 0; i < patch; ++i)
            Copy(x + ((b * channels + ch) * height + r * patch + i) * width + c * patch,
                 dst + (ch * patch + i) * patch, patch);
      }
    }
  });
  return 0;
}

// inputs patches (B, P, C), prefix (1, K, C) (the class token, a distillation token), pos (1, K + P, C);
// output the token sequence (B, K + P, C) = (prefix, patches) + pos in one pass (MindSpore's CPU Concat
// and broadcast Add took 1.3 ms for it at batch 8)
extern "C" int MindpptEmbedTokens(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                  void *stream, void *extra) {
  const float *patches = static_cast<const float *>(params[0]);
  const float *prefix = static_cast<const float *>(params[1]);
  const float *pos = static_cast<const float *>(params[2]);
  float *y = static_cast<float *>(params[3]);
  const int64_t batch = shapes[0][0], num_patches = shapes[0][1], dim = shapes[0][2], num_prefix = shapes[1][1];
  const int64_t tokens = num_prefix + num_patches;
  mindppt::ParallelFor(batch * tokens, dim, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / tokens, t = row % tokens;
      const float *from = t < num_prefix ? prefix + t * dim : patches + (b * num_patches + t - num_prefix) * dim;
      const float *p = pos + t * dim;
      float *to = y + row * dim;
#pragma omp simd
      for (int64_t c = 0; c < dim; ++c) to[c] = from[c] + p[c];
    }
  });
  return 0;
}
