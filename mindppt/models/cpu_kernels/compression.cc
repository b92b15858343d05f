// PPT's token compression for MindSpore's CPU backend (ops.Custom, func_type="aot"): the discrete plan
// (which tokens survive where, per image: prune or pool) and the size-weighted merge it implies, as
// index maps instead of the portable path's B x N_out x N_in assignment matrices. Those matrices and
// their products made a compression block cost more memory than a dense block.
//
// Plan: inputs scores (B, N) (protected tokens already scored above every other), pooled (B) (1 = pool),
// keys (B, H, N, D), settings (1) = number of protected tokens (1 or 2); outputs kept (B, N - r) int32
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
// The r A tokens with the best match merge into it. Layout: protected tokens, the unmerged A tokens in
// ascending position, then the B tokens in order.
void PlanPool(const float *keys, int64_t heads, int64_t dim, const Plan &p) {
  const int64_t n = p.tokens, num_a = (n + 1) / 2, num_b = n / 2, r = n - p.out;
  std::vector<double> metric(n * dim, 0.0);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t t = 0; t < n; ++t) {
      const float *row = keys + (h * n + t) * dim;
      double *m = metric.data() + t * dim;
      for (int64_t d = 0; d < dim; ++d) m[d] += row[d];
    }
  for (int64_t t = 0; t < n; ++t) {
    double *m = metric.data() + t * dim;
    double norm = 0.0;
    for (int64_t d = 0; d < dim; ++d) norm += m[d] * m[d];
    const double inv = 1.0 / std::sqrt(norm);
    for (int64_t d = 0; d < dim; ++d) m[d] *= inv;
  }
  std::vector<double> best(num_a, -INFINITY);
  std::vector<int64_t> match(num_a, p.protect == 2 ? 1 : 0);  // never the distillation token
  for (int64_t a = 1; a < num_a; ++a) {  // a = 0 is the class token
    const double *ma = metric.data() + 2 * a * dim;
    for (int64_t b = p.protect == 2 ? 1 : 0; b < num_b; ++b) {
      const double *mb = metric.data() + (2 * b + 1) * dim;
      double s = 0.0;
      for (int64_t d = 0; d < dim; ++d) s += ma[d] * mb[d];
      if (s > best[a]) {
        best[a] = s;
        match[a] = b;
      }
    }
  }
  std::vector<int32_t> order(num_a);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&best](int32_t a, int32_t b) { return best[a] > best[b]; });
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
  for (int64_t b = p.protect == 2 ? 1 : 0; b < num_b; ++b) place(2 * b + 1);
  for (int64_t a = 1; a < num_a; ++a)
    if (merged[a]) p.dest[2 * a] = p.dest[2 * match[a] + 1];
}

}  // namespace

// inputs attn (B, H, N, N) softmaxed (only the class token's row is read), v (B, H, N, D), settings (1) =
// number of protected tokens p; outputs scores (B, N) and variance (B): ATS significance
// (sum over heads of attn[h, 0, j]) * ||v_j|| normalised over the unprotected tokens, the protected ones
// scored 2 + (p - 1 - i) in front, and the unbiased variance of the normalised scores (double sums).
extern "C" int MindpptSignificance(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                                   void *stream, void *extra) {
  const float *attn = static_cast<const float *>(params[0]);
  const float *v = static_cast<const float *>(params[1]);
  const int64_t protect = static_cast<int64_t>(*static_cast<const float *>(params[2]));
  float *scores = static_cast<float *>(params[3]);
  float *variance = static_cast<float *>(params[4]);
  const int64_t batch = shapes[1][0], heads = shapes[1][1], tokens = shapes[1][2], dim = shapes[1][3];
  mindppt::ParallelFor(batch, heads * tokens * dim, [=](unsigned, int64_t begin, int64_t end) {
    std::vector<double> raw(tokens);
    for (int64_t b = begin; b < end; ++b) {
      double total = 0.0;
      for (int64_t j = protect; j < tokens; ++j) {
        double cls_attn = 0.0, squares = 0.0;
        for (int64_t h = 0; h < heads; ++h) {
          cls_attn += attn[((b * heads + h) * tokens) * tokens + j];  // row 0 of head h
          const float *vj = v + ((b * heads + h) * tokens + j) * dim;
          double sq = 0.0;
#pragma omp simd reduction(+ : sq)
          for (int64_t d = 0; d < dim; ++d) sq += static_cast<double>(vj[d]) * vj[d];
          squares += sq;
        }
        raw[j] = cls_attn * std::sqrt(squares);
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
  const float *pooled = static_cast<const float *>(params[1]);
  const float *keys = static_cast<const float *>(params[2]);
  const int64_t protect = static_cast<int64_t>(*static_cast<const float *>(params[3]));
  int32_t *kept = static_cast<int32_t *>(params[4]);
  int32_t *dest = static_cast<int32_t *>(params[5]);
  const int64_t batch = shapes[0][0], tokens = shapes[0][1], out = shapes[4][1];
  const int64_t heads = shapes[2][1], dim = shapes[2][3];
  mindppt::ParallelFor(batch, tokens * tokens * dim, [=](unsigned, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const Plan plan{tokens, out, protect, kept + b * out, dest + b * tokens};
      if (pooled[b] != 0.0f)
        PlanPool(keys + b * heads * tokens * dim, heads, dim, plan);
      else
        PlanPrune(scores + b * tokens, plan);
    }
  });
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
