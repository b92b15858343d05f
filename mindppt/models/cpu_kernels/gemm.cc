// Matrix products for MindSpore's CPU backend (ops.Custom, func_type="aot"), float32 only, on oneDNN's
// row-major sgemm from the libdnnl that MindSpore ships and has loaded (the Python side loads it before
// building these ops, and uses them only when it could). MindSpore's MatMul + BiasAdd ran 10-45% slower
// at the shapes of a ViT's layers, and a linear layer's epilogue (bias, skip connection, GELU) costs one
// more pass over memory per op there. The work is split between the kernel threads: a linear layer by
// blocks of rows (or of output columns when it has few rows), attention by (batch, head).
#include <dlfcn.h>

#include <algorithm>

#include "common.h"

namespace {

using Sgemm = int (*)(char, char, int64_t, int64_t, int64_t, float, const float *, int64_t, const float *, int64_t,
                      float, float *, int64_t);

Sgemm FindSgemm() {
  static const Sgemm sgemm = [] {
    void *handle = dlopen("libdnnl.so.3", RTLD_NOW | RTLD_NOLOAD);
    return handle != nullptr ? reinterpret_cast<Sgemm>(dlsym(handle, "dnnl_sgemm")) : nullptr;
  }();
  return sgemm;
}

constexpr int64_t kColumnBlock = 64;
// From this many rows on, a linear layer is split between the threads by rows: each thread then computes
// whole rows, the rows of the images that the next kernels (LayerNorm, attention by image) give the same
// thread, so they find them in its cache. DeiT-S at batch 8 ran 8-9% faster so; below about 256 rows
// (batch 1) the per-thread products got too small and the split by columns was faster.
constexpr int64_t kRowSplitRows = 256;

// fn(r0, r1, c0, c1) for each thread's part of an output of `rows` x `columns`: blocks of whole rows from
// kRowSplitRows rows on, else blocks of kColumnBlock columns.
template <typename Fn>
void SplitRowsOrColumns(int64_t rows, int64_t columns, int64_t work_per_row, int64_t work_per_block, Fn fn) {
  if (rows >= kRowSplitRows) {
    mindppt::ParallelFor(rows, work_per_row,
                         [=](unsigned, int64_t r0, int64_t r1) { fn(r0, r1, int64_t{0}, columns); });
    return;
  }
  const int64_t blocks = (columns + kColumnBlock - 1) / kColumnBlock;
  mindppt::ParallelFor(blocks, work_per_block, [=](unsigned, int64_t first, int64_t last) {
    fn(int64_t{0}, rows, first * kColumnBlock, std::min(last * kColumnBlock, columns));
  });
}

// The rows [r0, r1) and columns [c0, c1) of y = x w^T + bias (+ residual), then epilogue(row segment,
// length). The sgemm overwrites y (beta 0) and the bias and skip connection are added row by row after
// it, while the rows are in cache: filling y with them first cost a pass over y and the sgemm reading it
// back (1.5-3% of a forward).
template <typename Epilogue>
void LinearTile(const float *x, const float *w, const float *bias, const float *residual, float *y, int64_t depth,
                int64_t width, int64_t r0, int64_t r1, int64_t c0, int64_t c1, Sgemm sgemm, Epilogue epilogue) {
  const int64_t span = c1 - c0;
  sgemm('N', 'T', r1 - r0, span, depth, 1.0f, x + r0 * depth, depth, w + c0 * depth, depth, 0.0f,
        y + r0 * width + c0, width);
  const float *b = bias + c0;
  for (int64_t r = r0; r < r1; ++r) {
    float *out = y + r * width + c0;
    if (residual == nullptr) {
#pragma omp simd
      for (int64_t c = 0; c < span; ++c) out[c] += b[c];
    } else {
      const float *res = residual + r * width + c0;
#pragma omp simd
      for (int64_t c = 0; c < span; ++c) out[c] += res[c] + b[c];
    }
    epilogue(out, span);
  }
}

// x (R, K), w (N, K), y (R, N), split between the threads by SplitRowsOrColumns.
template <typename Epilogue>
int Linear(void **params, int *ndims, int64_t **shapes, bool with_residual, Epilogue epilogue) {
  const Sgemm sgemm = FindSgemm();
  if (sgemm == nullptr) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  const float *bias = static_cast<const float *>(params[2]);
  const float *residual = with_residual ? static_cast<const float *>(params[3]) : nullptr;
  float *y = static_cast<float *>(params[with_residual ? 4 : 3]);
  // x (..., K): every leading axis is a row
  const int64_t rows = mindppt::NumElements(ndims[0] - 1, shapes[0]), depth = shapes[0][ndims[0] - 1];
  const int64_t width = shapes[1][0];
  SplitRowsOrColumns(rows, width, width * depth, rows * depth, [=](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    LinearTile(x, w, bias, residual, y, depth, width, r0, r1, c0, c1, sgemm, epilogue);
  });
  return 0;
}

void NoEpilogue(float *, int64_t) {}

}  // namespace

// x (..., K), w (N, K), b (N) -> y (..., N) = x w^T + b
extern "C" int MindpptLinear(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                             void *stream, void *extra) {
  return Linear(params, ndims, shapes, false, NoEpilogue);
}

// x, w, b, residual (..., N) -> residual + x w^T + b
extern "C" int MindpptLinearResidual(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                     void *stream, void *extra) {
  return Linear(params, ndims, shapes, true, NoEpilogue);
}

// x, w, b -> gelu(x w^T + b), the GELU of gelu.cc
extern "C" int MindpptLinearGelu(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                 void *stream, void *extra) {
  return Linear(params, ndims, shapes, false, mindppt::GeluInPlace);
}

// dy (..., N), w (N, ...) -> dx (..., K) = dy w, w read as (N, K): a linear layer's input gradient, split
// between the threads as the layer's product is. MindSpore's MatMul took 15-80% longer at a ViT's shapes.
extern "C" int MindpptLinearGradInput(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  const Sgemm sgemm = FindSgemm();
  if (sgemm == nullptr) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const float *w = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t rows = mindppt::NumElements(ndims[0] - 1, shapes[0]), width = shapes[0][ndims[0] - 1];
  const int64_t depth = mindppt::NumElements(ndims[1] - 1, shapes[1] + 1);
  SplitRowsOrColumns(rows, depth, width * depth, rows * width, [=](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    sgemm('N', 'N', r1 - r0, c1 - c0, width, 1.0f, dy + r0 * width, width, w + c0, depth, 0.0f, dx + r0 * depth + c0,
          depth);
  });
  return 0;
}

// dy (..., N), x (..., K) -> dw (N, K) = dy^T x over all rows, and db (N), dy's column sums (in double): a
// linear layer's weight and bias gradients. Each thread computes a block of dw's rows and their db.
extern "C" int MindpptLinearGradWeight(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                       void *stream, void *extra) {
  const Sgemm sgemm = FindSgemm();
  if (sgemm == nullptr) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  const float *x = static_cast<const float *>(params[1]);
  float *dw = static_cast<float *>(params[2]);
  float *db = static_cast<float *>(params[3]);
  const int64_t rows = mindppt::NumElements(ndims[0] - 1, shapes[0]), width = shapes[0][ndims[0] - 1];
  const int64_t depth = shapes[1][ndims[1] - 1];
  const int64_t blocks = (width + kColumnBlock - 1) / kColumnBlock;
  mindppt::ParallelFor(blocks, rows * depth, [=](unsigned, int64_t first, int64_t last) {
    const int64_t n0 = first * kColumnBlock, n1 = std::min(last * kColumnBlock, width);
    sgemm('T', 'N', n1 - n0, depth, rows, 1.0f, dy + n0, width, x, depth, 0.0f, dw + n0 * depth, depth);
    thread_local std::vector<double> sums;
    sums.assign(n1 - n0, 0.0);
    double *acc = sums.data();
    for (int64_t r = 0; r < rows; ++r) {
      const float *row = dy + r * width + n0;
#pragma omp simd
      for (int64_t c = 0; c < n1 - n0; ++c) acc[c] += row[c];
    }
    for (int64_t c = 0; c < n1 - n0; ++c) db[n0 + c] = static_cast<float>(acc[c]);
  });
  return 0;
}

// q (B, H, N, D), k (B, H, M, D) -> q k^T (B, H, N, M)
extern "C" int MindpptAttentionScores(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  const Sgemm sgemm = FindSgemm();
  if (sgemm == nullptr) return 1;
  const float *q = static_cast<const float *>(params[0]);
  const float *k = static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[2]);
  const int64_t heads = shapes[0][0] * shapes[0][1], n = shapes[0][2], d = shapes[0][3], m = shapes[1][2];
  mindppt::ParallelFor(heads, n * m * d / 64, [=](unsigned, int64_t first, int64_t last) {
    for (int64_t h = first; h < last; ++h)
      sgemm('N', 'T', n, m, d, 1.0f, q + h * n * d, d, k + h * m * d, d, 0.0f, out + h * n * m, m);
  });
  return 0;
}

// attn (B, H, N, M), v (B, H, M, D) -> attn v with the heads merged, (B, N, H * D): each head's product
// is written into its columns, so no head-merge copy follows
extern "C" int MindpptAttentionValues(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  const Sgemm sgemm = FindSgemm();
  if (sgemm == nullptr) return 1;
  const float *attn = static_cast<const float *>(params[0]);
  const float *v = static_cast<const float *>(params[1]);
  float *out = static_cast<float *>(params[2]);
  const int64_t batch = shapes[0][0], heads = shapes[0][1], n = shapes[0][2], m = shapes[0][3], d = shapes[1][3];
  const int64_t width = heads * d;
  mindppt::ParallelFor(batch * heads, n * m * d / 64, [=](unsigned, int64_t first, int64_t last) {
    for (int64_t bh = first; bh < last; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      sgemm('N', 'N', n, d, m, 1.0f, attn + bh * n * m, m, v + bh * m * d, d, 0.0f, out + b * n * width + h * d, width);
    }
  });
  return 0;
}

// dout (B, H, N, M), q (B, H, N, D), k (B, H, M, D) -> dq = dout k (B, H, N, D), dk = dout^T q (B, H, M, D):
// the gradients of MindpptAttentionScores
extern "C" int MindpptAttentionScoresGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  const Sgemm sgemm = FindSgemm();
  if (sgemm == nullptr) return 1;
  const float *dout = static_cast<const float *>(params[0]);
  const float *q = static_cast<const float *>(params[1]);
  const float *k = static_cast<const float *>(params[2]);
  float *dq = static_cast<float *>(params[3]);
  float *dk = static_cast<float *>(params[4]);
  const int64_t heads = shapes[0][0] * shapes[0][1], n = shapes[0][2], m = shapes[0][3], d = shapes[1][3];
  mindppt::ParallelFor(heads, 2 * n * m * d / 64, [=](unsigned, int64_t first, int64_t last) {
    for (int64_t h = first; h < last; ++h) {
      sgemm('N', 'N', n, d, m, 1.0f, dout + h * n * m, m, k + h * m * d, d, 0.0f, dq + h * n * d, d);
      sgemm('T', 'N', m, d, n, 1.0f, dout + h * n * m, m, q + h * n * d, d, 0.0f, dk + h * m * d, d);
    }
  });
  return 0;
}

// dout (B, N, H * D) with the heads merged, attn (B, H, N, M), v (B, H, M, D) -> dattn = dout_h v^T
// (B, H, N, M) and dv = attn^T dout_h (B, H, M, D): the gradients of MindpptAttentionValues, each head's
// columns of dout read in place (no head split)
extern "C" int MindpptAttentionValuesGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  const Sgemm sgemm = FindSgemm();
  if (sgemm == nullptr) return 1;
  const float *dout = static_cast<const float *>(params[0]);
  const float *attn = static_cast<const float *>(params[1]);
  const float *v = static_cast<const float *>(params[2]);
  float *dattn = static_cast<float *>(params[3]);
  float *dv = static_cast<float *>(params[4]);
  const int64_t batch = shapes[1][0], heads = shapes[1][1], n = shapes[1][2], m = shapes[1][3], d = shapes[2][3];
  const int64_t width = heads * d;
  mindppt::ParallelFor(batch * heads, 2 * n * m * d / 64, [=](unsigned, int64_t first, int64_t last) {
    for (int64_t bh = first; bh < last; ++bh) {
      const float *g = dout + (bh / heads) * n * width + (bh % heads) * d;
      sgemm('N', 'T', n, m, d, 1.0f, g, width, v + bh * m * d, d, 0.0f, dattn + bh * n * m, m);
      sgemm('T', 'N', m, d, n, 1.0f, attn + bh * n * m, m, g, width, 0.0f, dv + bh * m * d, d);
    }
  });
  return 0;
}

namespace {

// Where the fused attention writes: the merged heads y (B, N, C), and for a compression block also the
// class token's probabilities (B, H, 1, N), the head-summed keys (B, N, D) and the value norms (B, N)
// (SummariseKeysValues): what the compression reads, a fraction of a token tensor, where copies of the keys
// and values would be two token tensors alive at the attention's memory peak.
struct AttentionOutputs {
  float *y, *cls, *keys, *norms;
};

// Attention at inference from the qkv projection (B, N, 3C), read in place as q | k | v with H heads of
// D = C / H columns each: per (image, head), scale q k^T (+ log size) goes through the softmax in a
// thread's N x N buffer and is multiplied by v into the head's columns of y. No head split, no scores
// tensor: the probabilities stay in cache between the three steps.
int Attend(void **params, int64_t **shapes, const float *log_size, const float *setting, AttentionOutputs to) {
  const Sgemm sgemm = FindSgemm();
  if (sgemm == nullptr) return 1;
  const float *qkv = static_cast<const float *>(params[0]);
  const int64_t batch = shapes[0][0], n = shapes[0][1], stride = shapes[0][2], width = stride / 3;
  const int64_t heads = static_cast<int64_t>(setting[0]), d = width / heads;
  const float scale = setting[1];
  mindppt::ParallelFor(batch * heads, 2 * n * n * d / 64, [=](unsigned, int64_t first, int64_t last) {
    thread_local std::vector<float> probs;
    probs.resize(n * n);
    float *p = probs.data();
    for (int64_t bh = first; bh < last; ++bh) {
      const int64_t b = bh / heads, h = bh % heads;
      const float *q = qkv + b * n * stride + h * d, *k = q + width, *v = q + 2 * width;
      sgemm('N', 'T', n, n, d, scale, q, stride, k, stride, 0.0f, p, n);
      const float *bias = log_size != nullptr ? log_size + b * n : nullptr;
      for (int64_t r = 0; r < n; ++r) mindppt::SoftmaxRow(p + r * n, bias, p + r * n, n);
      sgemm('N', 'N', n, d, n, 1.0f, p, n, v, stride, 0.0f, to.y + b * n * width + h * d, width);
      if (to.cls != nullptr) std::memcpy(to.cls + bh * n, p, n * sizeof(float));
    }
  });
  if (to.cls != nullptr) mindppt::SummariseKeysValues(qkv, batch, n, width, heads, to.keys, to.norms);
  return 0;
}

const float *LogSizesOf(void **params, int64_t **shapes) {
  return mindppt::LogSizes(static_cast<const float *>(params[1]), shapes[1][0] * shapes[1][1]);
}

AttentionOutputs Outputs(void **params, int first, bool internals) {
  float *y = static_cast<float *>(params[first]);
  if (!internals) return {y, nullptr, nullptr, nullptr};
  return {y, static_cast<float *>(params[first + 1]), static_cast<float *>(params[first + 2]),
          static_cast<float *>(params[first + 3])};
}

}  // namespace

// qkv (B, N, 3C), setting (heads, scale) -> softmax(scale q k^T) v with the heads merged, (B, N, C)
extern "C" int MindpptAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                void *stream, void *extra) {
  return Attend(params, shapes, nullptr, static_cast<const float *>(params[1]), Outputs(params, 2, false));
}

// qkv (B, N, 3C), size (B, N), setting (heads, scale) -> softmax(scale q k^T + log size) v, (B, N, C)
extern "C" int MindpptSizeAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                    void *stream, void *extra) {
  return Attend(params, shapes, LogSizesOf(params, shapes), static_cast<const float *>(params[2]),
                Outputs(params, 3, false));
}

// as MindpptAttention, and also the class token's probabilities (B, H, 1, N), the head-summed keys
// (B, N, C / H) and the value norms (B, N)
extern "C" int MindpptAttentionInternals(int nparam, void **params, int *ndims, int64_t **shapes,
                                         const char **dtypes, void *stream, void *extra) {
  return Attend(params, shapes, nullptr, static_cast<const float *>(params[1]), Outputs(params, 2, true));
}

// as MindpptSizeAttention, with the outputs of MindpptAttentionInternals
extern "C" int MindpptSizeAttentionInternals(int nparam, void **params, int *ndims, int64_t **shapes,
                                             const char **dtypes, void *stream, void *extra) {
  return Attend(params, shapes, LogSizesOf(params, shapes), static_cast<const float *>(params[2]),
                Outputs(params, 3, true));
}
