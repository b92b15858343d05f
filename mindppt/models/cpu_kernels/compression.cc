// PPT's token compression for MindSpore's CPU backend (ops.Custom, func_type="aot"): the discrete plan
// (which tokens survive where, per image: prune or pool) and the size-weighted merge it implies, as
// index maps instead of the portable path's B x N_out x N_in assignment matrices. Those matrices and
// their products made a compression block cost more memory than a dense block.
//
// Plan: inputs scores (B, N) (protected tokens already scored above every other), variance (B) and
// threshold () (an image pools when variance < threshold), keys (B, N, D) summed over the heads
// (SummariseKeysValues), settings (1) = number of
// protected tokens (1 or 2); outputs kept (B, N - r) int32
// (the original position of each output token: the best score for pruning, ToMe's layout for pooling)
// and dest (B, N) int32 (the output token each input token goes to, -1 if pruned). r comes from the
// output shape. Merge: new_x[d] = sum over dest[j] = d of size_j x_j / new_size[d], new_size[d] = sum size_j.
#include <algorithm>
#include <numeric>

#include "common.h"

namespace {

struct Plan {
  int64_t tokens, out, protect;
  int32_t *kept, *dest;
};

// Keep the N - r best scores in descending order (earlier position first on equal scores).
void PlanPrune(const float *scores, const Plan &p) {
  std::vector<int32_t> order(p.tokens);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [scores](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  std::fill(p.dest, p.dest + p.tokens, -1);
  for (int64_t i = 0; i < p.out; ++i) {
    p.kept[i] = order[i];
    p.dest[order[i]] = static_cast<int32_t>(i);
  }
}

// ToMe bipartite soft matching on the head-summed, L2-normalised keys (double precision): A = even
// positions, B = odd positions; the class token's row (and a distillation token's column) cannot match.
// The matching runs in three passes, so that one image's similarity rows are shared between threads too.
constexpr int64_t kTileRows = 4, kTileColumns = 16;  // a register tile of similarities (8 AVX-512 registers)
constexpr int64_t kMatchingBytes = int64_t{1} << 20;

struct Matching {
  int64_t tokens, num_a, num_b, dim, first_b;  // first_b: 1 when a distillation token is protected
  int64_t stride;     // num_b rounded up to whole tiles, the padding zero
  double *a_rows;     // (B, num_a, dim) normalised keys of the A tokens
  double *b_columns;  // (B, dim, stride) normalised keys of the B tokens, transposed for the row products
  double *best;       // (B, num_a) best similarity of each A token
  int32_t *match;     // (B, num_a) its B token (the first one on equal similarities)
};

// the normalised key of token t of an image (keys: the image's (N, D) head-summed keys), into a_rows or
// b_columns
void NormalisedKey(const float *keys, const Matching &m, int64_t image, int64_t t) {
  thread_local std::vector<double> metric;
  metric.assign(keys + t * m.dim, keys + (t + 1) * m.dim);
  double norm = 0.0;
#pragma omp simd reduction(+ : norm)
  for (int64_t d = 0; d < m.dim; ++d) norm += metric[d] * metric[d];
  const double inv = 1.0 / std::sqrt(norm);
  if (t % 2 == 0) {
    double *a = m.a_rows + (image * m.num_a + t / 2) * m.dim;
    for (int64_t d = 0; d < m.dim; ++d) a[d] = metric[d] * inv;
  } else {
    double *columns = m.b_columns + image * m.dim * m.stride;
    for (int64_t d = 0; d < m.dim; ++d) columns[d * m.stride + t / 2] = metric[d] * inv;
  }
}

// best and match of A tokens first .. first + count - 1 (count <= kTileRows; A token 0, the class token,
// is never matched) of an image: their rows of A B^T a register tile at a time, each dot product summed
// in dimension order
void BestMatches(const Matching &m, int64_t image, int64_t first, int64_t count) {
  const double *rows[kTileRows];
  for (int64_t i = 0; i < kTileRows; ++i)  // a short tile repeats its last row
    rows[i] = m.a_rows + (image * m.num_a + first + (i < count ? i : count - 1)) * m.dim;
  const double *columns = m.b_columns + image * m.dim * m.stride;
  double *best = m.best + image * m.num_a + first;
  int32_t *match = m.match + image * m.num_a + first;
  for (int64_t i = 0; i < count; ++i) {
    best[i] = -INFINITY;
    match[i] = static_cast<int32_t>(m.first_b);
  }
  for (int64_t b0 = 0; b0 < m.num_b; b0 += kTileColumns) {
    double tile[kTileRows][kTileColumns] = {};
    for (int64_t d = 0; d < m.dim; ++d) {
      const double *bd = columns + d * m.stride + b0;
      for (int64_t i = 0; i < kTileRows; ++i) {
        const double ad = rows[i][d];
#pragma omp simd
        for (int64_t j = 0; j < kTileColumns; ++j) tile[i][j] += ad * bd[j];
      }
    }
    const int64_t start = b0 < m.first_b ? m.first_b - b0 : 0;
    const int64_t stop = m.num_b - b0 < kTileColumns ? m.num_b - b0 : kTileColumns;
    for (int64_t i = 0; i < count; ++i)
      for (int64_t j = start; j < stop; ++j)
        if (tile[i][j] > best[i]) {
          best[i] = tile[i][j];
          match[i] = static_cast<int32_t>(b0 + j);
        }
  }
}

// The r A tokens with the best match merge into it. Layout: protected tokens, the unmerged A tokens in
// ascending position, then the B tokens in order.
void PlanPool(const Matching &m, int64_t image, const Plan &p) {
  const int64_t num_a = m.num_a, num_b = m.num_b, r = p.tokens - p.out;
  const double *best = m.best + image * num_a;
  const int32_t *match = m.match + image * num_a;
  std::vector<int32_t> order(num_a - 1);
  std::iota(order.begin(), order.end(), 1);
  std::stable_sort(order.begin(), order.end(), [best](int32_t a, int32_t b) { return best[a] > best[b]; });
  std::vector<char> merged(num_a, 0);
  for (int64_t i = 0; i < r; ++i) merged[order[i]] = 1;
  // output slots: protected first (class = A[0], distillation = B[0]), unmerged A ascending, other B tokens
  int64_t slot = 0;
  auto place = [&](int64_t position) {
    p.kept[slot] = static_cast<int32_t>(position);
    p.dest[position] = static_cast<int32_t>(slot);
    ++slot;
  };
  place(0);
  if (p.protect == 2) place(1);
  for (int64_t a = 1; a < num_a; ++a)
    if (!merged[a]) place(2 * a);
  for (int64_t b = m.first_b; b < num_b; ++b) place(2 * b + 1);
  for (int64_t a = 1; a < num_a; ++a)
    if (merged[a]) p.dest[2 * a] = p.dest[2 * match[a] + 1];
}

}  // namespace

void mindppt::SummariseKeysValues(const float *qkv, int64_t batch, int64_t tokens, int64_t width, int64_t heads,
                                  float *keys, float *norms) {
  const int64_t dim = width / heads;
  mindppt::ParallelFor(batch * tokens, 2 * width, [=](unsigned, int64_t begin, int64_t end) {
    thread_local std::vector<double> sums;
    for (int64_t row = begin; row < end; ++row) {
      const float *k = qkv + row * 3 * width + width, *v = k + width;
      sums.assign(dim, 0.0);
      double *metric = sums.data();
      for (int64_t h = 0; h < heads; ++h) {
#pragma omp simd
        for (int64_t d = 0; d < dim; ++d) metric[d] += k[h * dim + d];
      }
      for (int64_t d = 0; d < dim; ++d) keys[row * dim + d] = static_cast<float>(metric[d]);
      double squares = 0.0;
      for (int64_t h = 0; h < heads; ++h) {
        double sq = 0.0;
#pragma omp simd reduction(+ : sq)
        for (int64_t d = 0; d < dim; ++d) sq += static_cast<double>(v[h * dim + d]) * v[h * dim + d];
        squares += sq;
      }
      norms[row] = static_cast<float>(std::sqrt(squares));
    }
  });
}

// inputs qkv (B, N, 3C), setting (heads, ...); outputs keys (B, N, C / H) and norms (B, N): see
// SummariseKeysValues (the training step's attention, which keeps its heads split for the backward pass)
extern "C" int MindpptKeysAndValueNorms(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                        void *stream, void *extra) {
  const float *qkv = static_cast<const float *>(params[0]);
  const int64_t heads = static_cast<int64_t>(*static_cast<const float *>(params[1]));
  mindppt::SummariseKeysValues(qkv, shapes[0][0], shapes[0][1], shapes[0][2] / 3, heads,
                               static_cast<float *>(params[2]), static_cast<float *>(params[3]));
  return 0;
}

// inputs attn (B, H, R, N) softmaxed: all rows (R = N) or the class token's (R = 1), only that one read;
// norms (B, N) of the values (SummariseKeysValues), settings (1) = number of protected tokens p; outputs
// scores (B, N) and variance (B): ATS significance (sum over heads of attn[h, 0, j]) * ||v_j|| normalised
// over the unprotected tokens, the protected ones scored 2 + (p - 1 - i) in front, and the unbiased
// variance of the normalised scores (double sums).
extern "C" int MindpptSignificance(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  const float *attn = static_cast<const float *>(params[0]);
  const float *norms = static_cast<const float *>(params[1]);
  const int64_t protect = static_cast<int64_t>(*static_cast<const float *>(params[2]));
  float *scores = static_cast<float *>(params[3]);
  float *variance = static_cast<float *>(params[4]);
  const int64_t heads = shapes[0][1], rows = shapes[0][2], batch = shapes[1][0], tokens = shapes[1][1];
  mindppt::ParallelFor(batch, heads * tokens, [=](unsigned, int64_t begin, int64_t end) {
    std::vector<double> raw(tokens);
    for (int64_t b = begin; b < end; ++b) {
      double total = 0.0;
      for (int64_t j = protect; j < tokens; ++j) {
        double cls_attn = 0.0;
        for (int64_t h = 0; h < heads; ++h) cls_attn += attn[((b * heads + h) * rows) * tokens + j];  // row 0
        raw[j] = cls_attn * norms[b * tokens + j];
        total += raw[j];
      }
      const int64_t count = tokens - protect;
      double mean = 0.0;
      for (int64_t j = protect; j < tokens; ++j) {
        raw[j] /= total;
        mean += raw[j];
      }
      mean /= count;
      double squares = 0.0;
      for (int64_t j = protect; j < tokens; ++j) squares += (raw[j] - mean) * (raw[j] - mean);
      variance[b] = static_cast<float>(squares / (count - 1));
      float *s = scores + b * tokens;
      for (int64_t i = 0; i < protect; ++i) s[i] = static_cast<float>(2 + protect - 1 - i);
      for (int64_t j = protect; j < tokens; ++j) s[j] = static_cast<float>(raw[j]);
    }
  });
  return 0;
}

extern "C" int MindpptCompressionPlan(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                      void *stream, void *extra) {
  const float *scores = static_cast<const float *>(params[0]);
  const float *variance = static_cast<const float *>(params[1]);
  const float threshold = *static_cast<const float *>(params[2]);
  const float *keys = static_cast<const float *>(params[3]);
  const int64_t protect = static_cast<int64_t>(*static_cast<const float *>(params[4]));
  int32_t *kept = static_cast<int32_t *>(params[5]);
  int32_t *dest = static_cast<int32_t *>(params[6]);
  const int64_t batch = shapes[0][0], tokens = shapes[0][1], out = shapes[5][1];
  const int64_t dim = shapes[3][2];
  const int64_t num_a = (tokens + 1) / 2, num_b = tokens / 2;
  const int64_t stride = (num_b + kTileColumns - 1) / kTileColumns * kTileColumns;
  const int64_t tiles = (num_a - 1 + kTileRows - 1) / kTileRows;  // per image, from A token 1
  // The matching's buffers hold a group of images at a time, about kMatchingBytes, so that they do not grow
  // with the batch (each calling thread keeps its own). They are kept between calls: a fresh multi-megabyte
  // allocation faults its pages in each call.
  const int64_t per_image = (num_a * dim + dim * stride + num_a) * sizeof(double) + num_a * sizeof(int32_t);
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(batch, kMatchingBytes / per_image));
  thread_local std::vector<double> a_rows, b_columns, best;
  thread_local std::vector<int32_t> match;
  thread_local std::vector<char> pooled_images;
  pooled_images.resize(batch);
  for (int64_t b = 0; b < batch; ++b) pooled_images[b] = variance[b] < threshold;
  a_rows.resize(group * num_a * dim);
  b_columns.assign(group * dim * stride, 0.0);  // the tiles' padding stays zero
  best.resize(group * num_a);
  match.resize(group * num_a);
  const Matching m{tokens, num_a, num_b, dim, protect == 2 ? 1 : 0, stride,
                   a_rows.data(), b_columns.data(), best.data(), match.data()};
  for (int64_t first = 0; first < batch; first += group) {
    const int64_t count = std::min(group, batch - first);  // images first .. first + count - 1
    const char *pooled = pooled_images.data() + first;
    const float *group_keys = keys + first * tokens * dim;
    mindppt::ParallelFor(count * tokens, dim, [=](unsigned, int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t image = row / tokens;
        if (pooled[image]) NormalisedKey(group_keys + image * tokens * dim, m, image, row % tokens);
      }
    });
    mindppt::ParallelFor(count * tiles, kTileRows * num_b * dim, [=](unsigned, int64_t begin, int64_t end) {
      for (int64_t item = begin; item < end; ++item) {
        const int64_t image = item / tiles, a = 1 + item % tiles * kTileRows;
        if (pooled[image]) BestMatches(m, image, a, std::min(kTileRows, num_a - a));
      }
    });
    mindppt::ParallelFor(count, tokens * 16, [=](unsigned, int64_t begin, int64_t end) {
      for (int64_t image = begin; image < end; ++image) {
        const int64_t b = first + image;
        const Plan plan{tokens, out, protect, kept + b * out, dest + b * tokens};
        if (pooled[image])
          PlanPool(m, image, plan);
        else
          PlanPrune(scores + b * tokens, plan);
      }
    });
  }
  return 0;
}

// inputs x (B, N, C), size (B, N), dest (B, N) int32; outputs new_x (B, M, C), new_size (B, M)
extern "C" int MindpptMergeTokens(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                  void *stream, void *extra) {
  const float *x = static_cast<const float *>(params[0]);
  const float *size = static_cast<const float *>(params[1]);
  const int32_t *dest = static_cast<const int32_t *>(params[2]);
  float *new_x = static_cast<float *>(params[3]);
  float *new_size = static_cast<float *>(params[4]);
  const int64_t batch = shapes[0][0], tokens = shapes[0][1], width = shapes[0][2], out = shapes[3][1];
  mindppt::ParallelFor(batch, tokens * width, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float *nx = new_x + b * out * width;
      float *ns = new_size + b * out;
      std::fill(nx, nx + out * width, 0.0f);
      std::fill(ns, ns + out, 0.0f);
      for (int64_t j = 0; j < tokens; ++j) {
        const int32_t d = dest[b * tokens + j];
        if (d < 0) continue;
        const float s = size[b * tokens + j];
        const float *xj = x + (b * tokens + j) * width;
        float *to = nx + d * width;
        ns[d] += s;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) to[c] += s * xj[c];
      }
      for (int64_t d = 0; d < out; ++d) {
        const float s = ns[d];
        float *to = nx + d * width;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) to[c] /= s;
      }
    }
  });
  return 0;
}

// inputs dnew_x (B, M, C), size (B, N), new_size (B, M), dest (B, N); output dx (B, N, C)
extern "C" int MindpptMergeTokensBackward(int nparam, void **params, int *ndims, int64_t **shapes,
                                          const char **dtypes, void *stream, void *extra) {
  const float *dnew = static_cast<const float *>(params[0]);
  const float *size = static_cast<const float *>(params[1]);
  const float *new_size = static_cast<const float *>(params[2]);
  const int32_t *dest = static_cast<const int32_t *>(params[3]);
  float *dx = static_cast<float *>(params[4]);
  const int64_t batch = shapes[0][0], out = shapes[0][1], width = shapes[0][2], tokens = shapes[1][1];
  mindppt::ParallelFor(batch * tokens, width, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / tokens;
      const int32_t d = dest[row];
      float *to = dx + row * width;
      if (d < 0) {
        std::fill(to, to + width, 0.0f);
        continue;
      }
      const float w = size[row] / new_size[b * out + d];
      const float *from = dnew + (b * out + d) * width;
#pragma omp simd
      for (int64_t c = 0; c < width; ++c) to[c] = w * from[c];
    }
  });
  return 0;
}

// inputs rows (B, N, K), dest (B, N) int32; output (B, M, K): the sum of
// the rows sent to each output token (source maps)
extern "C" int MindpptSumRows(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                              void *stream, void *extra) {
  const float *rows = static_cast<const float *>(params[0]);
  const int32_t *dest = static_cast<const int32_t *>(params[1]);
  float *out = static_cast<float *>(params[2]);
  const int64_t batch = shapes[0][0], tokens = shapes[0][1], width = shapes[0][2], count = shapes[2][1];
  mindppt::ParallelFor(batch, tokens * width, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      float *o = out + b * count * width;
      std::fill(o, o + count * width, 0.0f);
      for (int64_t j = 0; j < tokens; ++j) {
        const int32_t d = dest[b * tokens + j];
        if (d < 0) continue;
        const float *from = rows + (b * tokens + j) * width;
        float *to = o + d * width;
#pragma omp simd
        for (int64_t c = 0; c < width; ++c) to[c] += from[c];
      }
    }
  });
  return 0;
}
