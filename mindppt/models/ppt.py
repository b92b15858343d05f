"""Adaptive token compression of PPT: per image, prune inattentive tokens or pool duplicates.

Static-shape formulation: both policies remove exactly ``r`` tokens, so each one is written as an
assignment matrix ``M`` (B x N_out x N_in) whose rows say which input tokens form an output token
(pruning: one-hot rows in score order; pooling: ToMe bipartite merges). Each image selects its matrix
by its policy, and tokens, sizes and the source map are all products with ``M``. No data-dependent
shapes, no host round-trip: one graph serves a batch that mixes both policies.

On the CPU backend the plan and the merge run as fused kernels (:mod:`.fused_cpu`) on index maps
instead: the same decisions from the same scores and keys, without the assignment matrices.

Nothing here knows about configs, files or training.
"""
import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from . import fused_cpu

# Name of the threshold parameter. It is a run-time setting, not a weight: checkpoint conversion skips
# it, and it is a Parameter only so that changing it takes effect in an already compiled graph.
THRESHOLD_PARAM = "ppt_threshold"


def is_runtime_setting(param_name):
    return param_name.rsplit(".", 1)[-1] == THRESHOLD_PARAM


def effective_r(num_tokens, r, num_protected=1):
    """Tokens one compression removes: at most half of the unprotected tokens (spec, step 3; the class
    token, and a distilled DeiT's distillation token, are protected)."""
    return max(0, min(int(r), (int(num_tokens) - int(num_protected)) // 2))


class _FusedMerge(nn.Cell):
    """The CPU merge kernel (size-weighted mean of the tokens each output token receives) with its
    gradient for x; sizes and the plan come from discrete decisions and get none."""

    def __init__(self, merge, merge_backward):
        super().__init__()
        self.merge, self.merge_backward = merge, merge_backward

    def construct(self, x, size, dest):
        return self.merge(x, size, dest)

    def bprop(self, x, size, dest, out, dout):
        return self.merge_backward(dout[0], size, out[1], dest), ops.zeros_like(size), ops.zeros_like(dest)


class TokenCompression(nn.Cell):
    """PPT's adaptive prune-or-pool for a fixed number of input tokens.

    The first ``num_protected`` tokens are never pruned or merged and stay in front, in their order:
    the class token (1), or the class and distillation tokens of a distilled DeiT (2). Scores, their
    normalisation and variance cover the other tokens only; pooling never merges into or from a
    protected token (ToMe's rule for class and distillation tokens).

    Inputs (all computed by the block's attention; only the class-token row of ``attn`` is used):
      x (B, N, C), attn (B, H, N, N) or (B, H, 1, N) softmaxed, keys (B, N, D) summed over the heads,
      value norms (B, N) over all heads, size (B, N) float32, source (B, N, N0) or None.
    Returns x (B, N - r, C), size (B, N - r), source or None, and an info tuple
    ``(variance (B,), pooled (B,) bool, size, kept (B, N - r) int32, source)`` for inspection.
    Scores, variance, the policy test and sizes stay in float32 whatever the compute dtype.
    """

    def __init__(self, num_tokens, r, threshold, trace_source=False, num_protected=1):
        super().__init__()
        if num_protected not in (1, 2):
            raise ValueError(f"num_protected must be 1 (class token) or 2 (class and distillation tokens), "
                             f"got {num_protected}")
        self.num_tokens = int(num_tokens)
        self.num_protected = int(num_protected)
        self.r = effective_r(num_tokens, r, num_protected)
        self.num_out = self.num_tokens - self.r
        self.ppt_threshold = Parameter(Tensor(float(threshold), ms.float32), name=THRESHOLD_PARAM,
                                       requires_grad=False)
        self.trace_source = trace_source
        self.num_a = (self.num_tokens + 1) // 2  # even positions, class token included
        self.num_b = self.num_tokens // 2  # odd positions
        self.num_unmerged = self.num_a - self.r

        # Protected tokens sit at positions 0 (A, class) and 1 (B, distillation): their row / column of
        # the A x B similarity is -inf, so nothing merges from or into them.
        protect = np.zeros((self.num_a, self.num_b), np.float32)
        protect[0, :] = -np.inf
        if self.num_protected == 2:
            protect[:, 0] = -np.inf
        self.protect = Tensor(protect)
        # Each B token keeps itself: row j has a one at original position 2j + 1.
        keep_b = np.zeros((self.num_b, self.num_tokens), np.float32)
        keep_b[np.arange(self.num_b), 2 * np.arange(self.num_b) + 1] = 1.0
        self.keep_b = Tensor(keep_b)
        self.b_positions = Tensor((2 * np.arange(self.num_b) + 1).astype(np.int32))
        # Ranking key that lists unmerged A tokens in ascending position.
        self.neg_a_position = Tensor(-np.arange(self.num_a, dtype=np.float32))
        # Protected tokens rank first in position order: the class token 2 (the spec), a distillation
        # token then 2 and the class token 3 (every normalised score is at most 1).
        self.protected_scores = Tensor((2.0 + np.arange(self.num_protected, dtype=np.float32)[::-1]).reshape(1, -1))

        self.bmm = ops.BatchMatMul()
        self.bmm_nt = ops.BatchMatMul(transpose_b=True)
        self.bmm_tn = ops.BatchMatMul(transpose_a=True)
        self.on = Tensor(1.0, ms.float32)
        self.off = Tensor(0.0, ms.float32)
        kernels = fused_cpu.compression_ops(self.num_out)
        self.fused_significance = self.fused_plan = self.fused_merge = self.fused_sum_rows = None
        if kernels is not None:
            self.fused_significance, self.fused_plan, merge, merge_backward, self.fused_sum_rows = kernels
            self.fused_merge = _FusedMerge(merge, merge_backward)
            self.num_protected_tensor = Tensor(np.array([self.num_protected], np.float32))

    @property
    def threshold(self):
        return float(self.ppt_threshold.asnumpy())

    @threshold.setter
    def threshold(self, value):
        self.ppt_threshold.set_data(Tensor(float(value), ms.float32))

    def significance(self, attn, norms):
        """Normalised ATS scores (B, N), protected tokens set above every other score, and the unbiased
        variance of the unprotected tokens' scores (one fused kernel on the CPU backend)."""
        if self.fused_significance is not None and attn.dtype == ms.float32:
            return self.fused_significance(attn, norms, self.num_protected_tensor)
        cls_attn = attn[:, :, 0, :].astype(ms.float32).sum(axis=1)  # (B, N)
        raw = (cls_attn * norms)[:, self.num_protected:]
        normalised = raw / raw.sum(axis=1, keepdims=True)
        centred = normalised - normalised.mean(axis=1, keep_dims=True)
        variance = (centred * centred).sum(axis=1) / (self.num_tokens - self.num_protected - 1)
        protected = ops.broadcast_to(self.protected_scores, (normalised.shape[0], self.num_protected))
        return ops.concat((protected, normalised), axis=1), variance

    def prune_assignment(self, scores):
        """Keep the N - r best tokens in descending score order."""
        _, keep = ops.topk(scores, self.num_out, sorted=True)
        return ops.one_hot(keep, self.num_tokens, self.on, self.off), keep

    def pool_assignment(self, keys):
        """ToMe bipartite soft matching on the head-summed keys (the mean's 1 / heads cancels in the
        normalisation), protected tokens untouched and in front."""
        metric = keys / ops.sqrt((keys * keys).sum(axis=-1, keepdims=True))
        a, b = metric[:, ::2, :], metric[:, 1::2, :]
        similarity = self.bmm_nt(a, b) + self.protect  # (B, Na, Nb)
        best_match, best_b = ops.max(similarity, axis=-1)
        _, merged_a = ops.topk(best_match, self.r, sorted=True)
        target_b = ops.gather_elements(best_b, 1, merged_a)
        is_merged = ops.one_hot(merged_a, self.num_a, self.on, self.off).sum(axis=1)
        # Unmerged A tokens in ascending original position (class token first).
        _, unmerged_a = ops.topk(self.neg_a_position - is_merged * (2.0 * self.num_a), self.num_unmerged)
        unmerged_rows = ops.one_hot(unmerged_a * 2, self.num_tokens, self.on, self.off)
        merged_sources = ops.one_hot(merged_a * 2, self.num_tokens, self.on, self.off)  # (B, r, N)
        merged_targets = ops.one_hot(target_b, self.num_b, self.on, self.off)  # (B, r, Nb)
        b_rows = self.keep_b + self.bmm_tn(merged_targets, merged_sources)
        kept = ops.concat(
            (unmerged_a * 2, ops.broadcast_to(self.b_positions, (keys.shape[0], self.num_b))), axis=1)
        return self.protected_first(ops.concat((unmerged_rows, b_rows), axis=1)), self.protected_first(kept)

    def protected_first(self, rows):
        """Pooled token order: the unmerged A tokens (ascending), then the B tokens. A distillation token
        (the first B token) moves to position 1, after the class token (ToMe's order)."""
        if self.num_protected == 1:
            return rows
        u = self.num_unmerged
        return ops.concat((rows[:, :1], rows[:, u:u + 1], rows[:, 1:u], rows[:, u + 1:]), axis=1)

    def construct(self, x, attn, keys, norms, size, source):
        # Scores and matching only make discrete choices: no gradient flows through them.
        attn, keys, norms = ops.stop_gradient(attn), ops.stop_gradient(keys), ops.stop_gradient(norms)
        scores, variance = self.significance(attn, norms)
        pooled = variance < self.ppt_threshold  # the fused plan makes this test itself
        if self.fused_plan is not None and x.dtype == ms.float32:
            kept, dest = self.fused_plan(scores, variance, self.ppt_threshold, keys, self.num_protected_tensor)
            new_x, new_size = self.fused_merge(x, size, dest)
            if self.trace_source:
                source = self.fused_sum_rows(source, dest)
            return new_x, new_size, source, (variance, pooled, new_size, kept, source)
        prune_rows, prune_kept = self.prune_assignment(scores)
        pool_rows, pool_kept = self.pool_assignment(keys)
        assignment = ops.select(pooled.reshape(-1, 1, 1), pool_rows, prune_rows)
        kept = ops.select(pooled.reshape(-1, 1), pool_kept, prune_kept.astype(ms.int32))

        # Size-weighted mean of each group; for pruning this is just a gather.
        size_col = size.expand_dims(-1)
        new_size_col = self.bmm(assignment, size_col)
        weighted = self.bmm(assignment, x.astype(ms.float32) * size_col)
        new_x = (weighted / new_size_col).astype(x.dtype)
        new_size = new_size_col.squeeze(-1)
        if self.trace_source:
            source = self.bmm(assignment, source)
        return new_x, new_size, source, (variance, pooled, new_size, kept, source)
