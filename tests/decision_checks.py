"""PPT's discrete decisions compared between two runs whose arithmetic differs, portably.

Two runs of the same images -- the float64 NumPy reference and the float32 model, fp16 (AMP O2) and
float32, a batch and its images one by one -- compute the significance scores, their variance and the
pooling similarities with different rounding. Where two candidates are (nearly) tied, that rounding
decides which one a run keeps, and it depends on the CPU's kernels (AVX2 and AVX-512 builds of
MindSpore's nnacl and oneDNN take other code paths, with other accumulation orders and FMA use) and on
the thread count. So no exact cross-run equality of decisions can be asserted. What can:

* per run, exactly: the decisions are the ones the spec's rules give on that run's *own* numbers
  (:func:`check_run`): the policy is ``variance < threshold``; the variance is the unbiased variance of
  the scores; pruning keeps the top scores in descending order; pooling merges the r A tokens of best
  similarity into their best B token, with the spec's layout; sizes and source maps follow exactly;
* across runs (:func:`compare_runs`), for an image whose tokens entering a block are the same in both
  runs: delta, the largest score difference between the runs (measured here, from both runs' scores),
  is within a bound derived from the precision; then, given the per-run rules, a kept token may differ
  only if its score lies within 2 delta of the cut (the scores of the last kept and first dropped
  token), the j-th kept token only by one whose score is within 2 delta of it (order statistics move
  by at most delta), the policy only if the variance is within the variance error that delta implies
  of the threshold, and a pooling merge only between candidates whose similarities are within twice
  the measured similarity difference. Everything else -- sizes, source maps, layout, whatever is not
  near a tie -- must be equal exactly. After an allowed near-tie difference the image's later blocks see
  other tokens and are only checked per run; images whose decisions agree at every block are returned,
  so that their logits can be compared.

A distilled DeiT protects two tokens (``num_protected`` = 2: class and distillation token) instead of
the class token alone. Everything above then reads "protected tokens" for "class token": they come
first in order with scores 3 and 2, are never dropped or merged, and the scores' variance, ranking
and near-tie windows cover the other tokens; pooling's layout is class, distillation, the unmerged A
tokens ascending, the other B tokens.

The model runs come from :func:`probe`, which returns each compression block's info plus the scores it
ranked and the keys it matched on (the real model code, the block's TokenCompression wrapped).
"""
import weakref

import mindspore as ms
import numpy as np
from mindspore import nn

from mindppt.models import CompressionInspector

U32 = 2.0 ** -24  # unit roundoff of float32
U16 = 2.0 ** -11  # unit roundoff of float16
U64 = 2.0 ** -53  # unit roundoff of float64

# How far two float32 runs of DeiT-S (or float32 and the float64 reference) may drift apart. Measured on
# the parity inputs of tests/test_parity.py and on test_models' batch-vs-alone runs (AVX2 EPYC, default;
# oneDNN capped to AVX and to SSE4.1 with ONEDNN_MAX_CPU_ISA; one kernel thread): scores 7e-6-1.9e-5 of
# the largest score (sharp random attention amplifies rounding), similarities 8e-7-3.3e-6. Bounds: 6x and
# 4.6x that; they only catch a broken computation (the near-tie windows use the measured differences).
FP32_SCORE_RTOL = 2 ** 11 * U32  # 1.2e-4: max |score difference| / largest score, per image and block
FP32_SIM_ATOL = 2 ** 8 * U32  # 1.5e-5: max |similarity difference| (cosines)
# Logits of images whose decisions agree, float32 model vs float64 reference: measured 6e-6-1.1e-5 of the
# largest logit (DeiT-S, tests/test_parity.py, the four configurations above); bound 10x.
FP32_LOGIT_RTOL = 1e-4


# --------------------------------------------------------------------------------------------
# The model's own scores and keys
# --------------------------------------------------------------------------------------------

class _Recording(nn.Cell):
    """In place of a block's TokenCompression: the same outputs, and the info tuple extended by the
    significance scores the cell ranked (same method, same inputs, same graph) and the keys it matched
    on. Installed after any mixed-precision pass, without a precision flag of its own, so the wrapped
    cell's own flag still casts its inputs."""

    def __init__(self, inner):
        super().__init__(auto_prefix=False)
        self.inner = inner

    @property
    def threshold(self):
        return self.inner.threshold

    @threshold.setter
    def threshold(self, value):
        self.inner.threshold = value

    def construct(self, x, attn, keys, norms, size, source):
        x, size, source, info = self.inner(x, attn, keys, norms, size, source)
        scores, _ = self.inner.significance(attn, norms)
        return x, size, source, info + (scores, keys)


_PROBES = weakref.WeakKeyDictionary()


def probe(model, images):
    """Like ``inspect_compression`` (model built with ``trace_source=True``), with two more entries per
    block: ``scores`` (B, N_in) float32 and ``keys`` (B, N_in, D), summed over the heads. Wraps the model's compression
    cells on first use, so call it only after ``apply_amp`` and before any other graph of this model.
    Each entry also holds the cell's ``num_protected``."""
    assert model.trace_source, "probe needs trace_source=True"
    inspector = _PROBES.get(model)
    if inspector is None:
        for blk in model.blocks:
            if blk.compression is not None and not isinstance(blk.compression, _Recording):
                blk._cells["compression"] = _Recording(blk.compression)  # pylint: disable=protected-access
        inspector = _PROBES[model] = CompressionInspector(model)
    inspector.set_train(False)
    logits, infos = inspector(ms.Tensor(np.asarray(images, np.float32)))
    keys = ("variance", "pooled", "size", "kept", "source", "scores", "keys")
    out = []
    for block, info in zip(model.compression_blocks, infos):
        entry = {"block": block, "num_protected": model.blocks[block].compression.inner.num_protected}
        entry.update((key, value.asnumpy()) for key, value in zip(keys, info))
        out.append(entry)
    return logits.asnumpy(), out


def stack_images(results):
    """One (logits, infos) from per-image ``probe`` results (e.g. each image run alone)."""
    logits = np.concatenate([result[0] for result in results])
    infos = []
    for j, first in enumerate(results[0][1]):
        entry = {"block": first["block"], "num_protected": first["num_protected"]}
        for key in first:
            if key not in entry:
                entry[key] = np.concatenate([result[1][j][key] for result in results])
        infos.append(entry)
    return logits, infos


# --------------------------------------------------------------------------------------------
# Runs in one format
# --------------------------------------------------------------------------------------------

def similarity_from_keys(keys, num_protected=1):
    """The spec's pooling similarity (see ppt_reference.similarity) of every image, in float64, from the keys
    summed over the heads (B, N, D) (the mean's 1/H cancels in the normalisation)."""
    metric = keys.astype(np.float64)
    metric = metric / np.linalg.norm(metric, axis=-1, keepdims=True)
    sim = np.einsum("bid,bjd->bij", metric[:, 0::2], metric[:, 1::2])
    sim[:, 0, :] = -np.inf
    if num_protected == 2:
        sim[:, :, 0] = -np.inf  # nothing merges into the distillation token
    return sim


class Run:
    """One run's per-block decisions in one format.

    ``threshold``: one number, or one per compression block.
    ``unit``: unit roundoff of the arithmetic that computed the variance from the scores.
    ``sim_slack``: how far the similarities held here may be from the ones the run matched on (a model
    run's are recomputed in float64 from its keys; it matched on float32 values of the same formula).
    ``num_protected``: tokens in front that compression never drops or merges (1: class token; 2: class
    and distillation token of a distilled DeiT)."""

    def __init__(self, name, logits, blocks, threshold, unit, sim_slack=0.0, num_protected=1):
        self.name, self.logits, self.blocks = name, np.asarray(logits, np.float64), blocks
        self.threshold, self.unit, self.sim_slack = threshold, unit, sim_slack
        self.num_protected = num_protected

    @staticmethod
    def _num_protected(infos):
        # infos without the entry come from a class-token-only model (a distilled one would then fail the
        # protected-score check loudly)
        values = {int(info.get("num_protected", 1)) for info in infos}
        assert len(values) <= 1, f"compression blocks protect different numbers of tokens: {values}"
        return values.pop() if values else 1

    @classmethod
    def from_model(cls, name, logits, infos, threshold):
        num_protected = cls._num_protected(infos)
        blocks = []
        for info in infos:
            head_dim = info["keys"].shape[2]
            blocks.append(dict(block=info["block"], variance=info["variance"], pooled=info["pooled"].astype(bool),
                               kept=info["kept"].astype(np.int64), size=info["size"], source=info["source"],
                               scores=info["scores"].astype(np.float64),
                               similarity=similarity_from_keys(info["keys"], num_protected)))
        # float32 evaluation of the similarity from the keys held here (norms, dot products of length
        # head_dim): a few roundings per term, with margin
        return cls(name, logits, blocks, threshold, U32, sim_slack=4 * (head_dim + 8) * U32 if infos else 0.0,
                   num_protected=num_protected)

    @classmethod
    def from_reference(cls, name, logits, infos, threshold):
        blocks = [dict(block=info["block"], variance=info["variance"], pooled=info["pool"], kept=info["kept"],
                       size=info["size"], source=info["source"], scores=info["scores"],
                       similarity=info["similarity"]) for info in infos]
        return cls(name, logits, blocks, threshold, U64, num_protected=cls._num_protected(infos))

    def threshold_at(self, i):
        if isinstance(self.threshold, (list, tuple, np.ndarray)):
            return float(self.threshold[i])
        return self.threshold

    def input_source(self, i, b):
        if i == 0:
            return np.eye(self.blocks[0]["scores"].shape[1])
        return np.asarray(self.blocks[i - 1]["source"][b], np.float64)

    def image(self, i, b):
        """Block i, image b: what a cross-run comparison needs."""
        blk = self.blocks[i]
        return dict(variance=float(blk["variance"][b]), var_dtype=np.asarray(blk["variance"]).dtype,
                    pooled=bool(blk["pooled"][b]), kept=np.asarray(blk["kept"][b]),
                    size=np.asarray(blk["size"][b], np.float64), source=np.asarray(blk["source"][b], np.float64),
                    scores=np.asarray(blk["scores"][b], np.float64), similarity=blk["similarity"][b],
                    in_source=self.input_source(i, b))


def _keys(source):
    """Token identities: the original patches each token covers."""
    return [row.tobytes() for row in (np.asarray(source) > 0.5).astype(np.uint8)]


def _exact_variance(scores, num_protected):
    return float(np.var(scores[num_protected:], ddof=1))


def _variance_eval_error(run, n, variance):
    """Bound on |float variance - exact variance of the same scores|: a sum of n squares (n roundings)
    plus centring, scaling and division (the mean's own error only enters squared, as the centred
    values sum to zero)."""
    return (n + 8) * run.unit * abs(variance)


def _pool_rows(n_unmerged, n_out, num_protected):
    """Output rows of a pooled image holding the unmerged A tokens and the B tokens, each in the spec's
    order: A rows first, then B rows; with a distillation token (the first B token) at row 1 instead."""
    if num_protected == 1:
        return np.arange(n_unmerged), np.arange(n_unmerged, n_out)
    return (np.concatenate([[0], np.arange(2, n_unmerged + 1)]),
            np.concatenate([[1], np.arange(n_unmerged + 1, n_out)]))


def _pool_layout(img, num_protected):
    """Merged A tokens and their B targets, read off a pooled image's kept indices and source map."""
    n_in, n_out = img["in_source"].shape[0], img["source"].shape[0]
    n_a, r = (n_in + 1) // 2, n_in - n_out
    n_unmerged = n_a - r
    a_rows, b_rows = _pool_rows(n_unmerged, n_out, num_protected)
    unmerged = img["kept"][a_rows] // 2
    merged = np.setdiff1d(np.arange(n_a), unmerged)
    # the output row that holds each input token's patches, and the B token (-1: none) each row holds
    overlap = img["in_source"] @ img["source"].T
    row = overlap.argmax(axis=1)
    b_of_row = np.full(n_out, -1)
    b_of_row[b_rows] = np.arange(len(b_rows))
    targets = {int(a): int(b_of_row[row[2 * a]]) for a in merged}
    return a_rows, b_rows, unmerged, merged, targets, overlap, row


# --------------------------------------------------------------------------------------------
# Per run: the spec's rules applied to the run's own numbers, exactly
# --------------------------------------------------------------------------------------------

_PROTECTED_NAMES = {1: "class token", 2: "class and distillation tokens"}


def check_run(run):
    """Every decision of ``run`` follows from its own scores, variance and similarities (see module doc).
    Exact, except the similarity comparisons, which allow ``run.sim_slack``."""
    p = run.num_protected
    protected_scores = 2.0 + np.arange(p)[::-1]  # class 2; class 3 and distillation 2
    for i, blk in enumerate(run.blocks):
        for b in range(len(blk["pooled"])):
            img = run.image(i, b)
            where = f"{run.name} block {blk['block']} image {b}"
            n_in, n_out = img["in_source"].shape[0], img["source"].shape[0]
            scores, kept, in_source, source = img["scores"], img["kept"], img["in_source"], img["source"]
            assert scores.shape == (n_in,) and kept.shape == (n_out,), where
            assert np.array_equal(kept[:p], np.arange(p)) and np.array_equal(scores[:p], protected_scores), \
                f"{where}: {_PROTECTED_NAMES[p]} not first"
            np.testing.assert_array_equal(source[:p], in_source[:p],
                                          err_msg=f"{where}: {_PROTECTED_NAMES[p]} dropped, moved or merged")
            threshold = np.asarray(run.threshold_at(i), img["var_dtype"])
            assert img["pooled"] == bool(np.asarray(img["variance"], img["var_dtype"]) < threshold), \
                f"{where}: policy is not variance < threshold"
            exact = _exact_variance(scores, p)
            assert abs(img["variance"] - exact) <= _variance_eval_error(run, n_in, exact), \
                f"{where}: variance {img['variance']!r} is not the variance of the scores ({exact!r})"
            np.testing.assert_array_equal(img["size"], source.sum(axis=1), err_msg=where)
            if img["pooled"]:
                _check_pooled(run, img, where)
            else:
                np.testing.assert_array_equal(source, in_source[kept], err_msg=f"{where}: pruned sources")
                ranked = scores[kept[p:]]
                assert np.all(np.diff(ranked) <= 0), f"{where}: kept tokens not in descending score order"
                dropped = np.setdiff1d(np.arange(p, n_in), kept)
                assert ranked.min() >= scores[dropped].max(), f"{where}: a dropped token outscores a kept one"


def _check_pooled(run, img, where):
    n_in = img["in_source"].shape[0]
    a_rows, b_rows, unmerged, merged, targets, overlap, row = _pool_layout(img, run.num_protected)
    kept = img["kept"]
    kept_a = kept[a_rows]
    assert np.all(kept_a % 2 == 0) and np.all(np.diff(kept_a) > 0), f"{where}: A layout"
    np.testing.assert_array_equal(kept[b_rows], np.arange(1, n_in, 2), err_msg=f"{where}: B layout")
    # every input token lies wholly in one output row: its own, or (merged A) its target B's
    np.testing.assert_array_equal(overlap[np.arange(n_in), row], img["in_source"].sum(axis=1), err_msg=where)
    expected = img["in_source"][kept].copy()
    for a, t in targets.items():
        assert 0 <= t < n_in // 2, f"{where}: A token {a} not merged into a B token"
        assert run.num_protected == 1 or t != 0, f"{where}: A token {a} merged into the distillation token"
        expected[b_rows[t]] += img["in_source"][2 * a]
    np.testing.assert_array_equal(img["source"], expected, err_msg=f"{where}: pooled sources")
    sim, slack = img["similarity"], run.sim_slack
    best = sim.max(axis=1)
    others = np.setdiff1d(unmerged, [0])
    if merged.size and others.size:
        assert best[merged].min() >= best[others].max() - 2 * slack, f"{where}: merged A tokens not the best matched"
    for a, t in targets.items():
        assert sim[a, t] >= best[a] - 2 * slack, f"{where}: A token {a} not merged into its best match"


# --------------------------------------------------------------------------------------------
# Across runs
# --------------------------------------------------------------------------------------------

def compare_runs(run, ref, score_rtol, sim_atol, log=None):
    """Check ``run`` against ``ref`` (see module doc) after :func:`check_run` on both. ``score_rtol``
    bounds delta relative to the image's largest score, ``sim_atol`` the similarity difference: the
    precision-derived limits of how far the two runs' arithmetic may drift apart.

    Returns ``agree``, a bool per image: same policy and same token groups at every block (so logits
    can be compared), and appends one line per near-tie difference or unchecked block to ``log``."""
    check_run(run)
    check_run(ref)
    log = [] if log is None else log
    num_images = len(ref.blocks[0]["pooled"]) if ref.blocks else len(ref.logits)
    agree = np.ones(num_images, bool)
    for b in range(num_images):
        for i in range(len(ref.blocks)):
            mine, theirs = run.image(i, b), ref.image(i, b)
            where = f"{run.name} vs {ref.name}, block {ref.blocks[i]['block']} image {b}"
            keys, ref_keys = _keys(mine["in_source"]), _keys(theirs["in_source"])
            if sorted(keys) != sorted(ref_keys):
                agree[b] = False  # an earlier near-tie difference: other tokens, checked per run only
                log.append(f"{where}: other input tokens after an earlier near-tie; checked per run only")
                break
            if not _compare_image(mine, theirs, keys, ref_keys, run, ref, ref.threshold_at(i), score_rtol, sim_atol,
                                  where, log):
                agree[b] = False
                break
    return agree


def _compare_image(mine, theirs, keys, ref_keys, run, ref, threshold, score_rtol, sim_atol, where, log):
    p = ref.num_protected
    assert run.num_protected == p, f"{where}: the runs protect {run.num_protected} and {p} tokens"
    position = {key: j for j, key in enumerate(ref_keys)}
    perm = np.array([position[key] for key in keys])  # ref index of each of my tokens
    s, s_ref = mine["scores"], theirs["scores"][perm]
    n = len(s) - p  # unprotected tokens
    delta = float(np.abs(s[p:] - s_ref[p:]).max())
    assert delta <= score_rtol * s_ref[p:].max(), \
        f"{where}: scores differ by {delta:.3g} ({delta / s_ref[p:].max():.2e} of the largest), " \
        f"bound {score_rtol:.2e}"
    # variance error implied by delta (sum(c) = 0 makes the first-order term delta * sum|c|) plus both
    # runs' own evaluation error
    centred = s_ref[p:] - s_ref[p:].mean()
    var_err = (2 * delta * np.abs(centred).sum() + 4 * n * delta ** 2) / (n - 1) \
        + _variance_eval_error(run, len(s), mine["variance"]) + _variance_eval_error(ref, len(s), theirs["variance"])
    assert abs(mine["variance"] - theirs["variance"]) <= var_err, \
        f"{where}: variances {mine['variance']:.6g} / {theirs['variance']:.6g} differ by more than {var_err:.3g}"
    if abs(theirs["variance"] - threshold) > var_err:
        assert mine["pooled"] == theirs["pooled"], \
            f"{where}: policy differs although the variance {theirs['variance']:.6g} is further from the " \
            f"threshold {threshold:.6g} than the variance error {var_err:.3g}"
    if mine["pooled"] != theirs["pooled"]:
        log.append(f"{where}: policy differs, variance within {var_err:.2g} of the threshold")
        return False
    if mine["pooled"]:
        return _compare_pooled(mine, theirs, keys, ref_keys, run, ref, sim_atol, where, log)
    return _compare_pruned(mine, theirs, keys, ref_keys, perm, delta, p, where, log)


def _compare_pruned(mine, theirs, keys, ref_keys, perm, delta, p, where, log):
    s_ref = theirs["scores"]
    window = 2 * delta
    m = len(theirs["kept"]) - p  # kept besides the protected tokens
    ranked = np.sort(s_ref[p:])[::-1]
    cut_high, cut_low = ranked[m - 1], ranked[m]  # last kept, first dropped (reference run)
    kept_ref = perm[mine["kept"]]  # my kept tokens as ref indices
    for token in set(kept_ref.tolist()) ^ set(theirs["kept"].tolist()):
        assert cut_low - window <= s_ref[token] <= cut_high + window, \
            f"{where}: token {token} (score {s_ref[token]:.6g}) kept by one run only, but not within " \
            f"2 delta = {window:.2g} of the cut [{cut_low:.6g}, {cut_high:.6g}]"
    gaps = np.abs(s_ref[kept_ref] - s_ref[theirs["kept"]])
    assert gaps.max() <= window, \
        f"{where}: position {int(gaps.argmax())} keeps tokens whose scores differ by {gaps.max():.2g} > 2 delta"
    if set(kept_ref.tolist()) != set(theirs["kept"].tolist()):
        log.append(f"{where}: pruning kept other near-tied tokens at the cut (2 delta = {window:.2g})")
        return False
    if np.any(kept_ref != theirs["kept"]):
        log.append(f"{where}: same kept tokens, near-tied ones in another order")
    return True


def _compare_pooled(mine, theirs, keys, ref_keys, run, ref, sim_atol, where, log):
    if keys != ref_keys:
        log.append(f"{where}: pooled, input tokens in another order (other A/B split); checked per run only")
        return False
    sim, sim_ref = mine["similarity"], theirs["similarity"]
    finite = np.isfinite(sim_ref)
    delta = float(np.abs(sim[finite] - sim_ref[finite]).max())
    assert delta <= sim_atol, f"{where}: pooling similarities differ by {delta:.3g}, bound {sim_atol:.2e}"
    # both runs match on their own values, within sim_slack of the ones held here
    window = 2 * delta + 4 * (run.sim_slack + ref.sim_slack)
    _, _, _, merged, targets, _, _ = _pool_layout(mine, run.num_protected)
    _, _, _, merged_ref, targets_ref, _, _ = _pool_layout(theirs, ref.num_protected)
    best = np.sort(sim_ref.max(axis=1)[1:])[::-1]
    r = len(merged_ref)
    cut_high, cut_low = (best[r - 1], best[r]) if 0 < r < len(best) else (np.inf, -np.inf)
    for a in set(merged.tolist()) ^ set(merged_ref.tolist()):
        value = sim_ref[a].max()
        assert cut_low - window <= value <= cut_high + window, \
            f"{where}: A token {2 * a} merged by one run only, best similarity {value:.6g} not within " \
            f"{window:.2g} of the cut [{cut_low:.6g}, {cut_high:.6g}]"
    same = True
    for a in set(targets) & set(targets_ref):
        if targets[a] != targets_ref[a]:
            gap = abs(sim_ref[a, targets[a]] - sim_ref[a, targets_ref[a]])
            assert gap <= window, f"{where}: A token {2 * a} merged into B {targets[a]} / {targets_ref[a]}, " \
                                  f"similarities {gap:.2g} apart > {window:.2g}"
            same = False
    if set(merged.tolist()) != set(merged_ref.tolist()) or not same:
        log.append(f"{where}: pooling merged near-tied tokens differently (window {window:.2g})")
        return False
    np.testing.assert_array_equal(mine["kept"], theirs["kept"], err_msg=where)
    np.testing.assert_array_equal(mine["size"], theirs["size"], err_msg=where)
    np.testing.assert_array_equal(mine["source"], theirs["source"], err_msg=where)
    return True


def score_errors(run, ref):
    """Per block, the largest delta / max score over images whose input tokens match, and the largest
    similarity difference over images whose input tokens match in order (for printing)."""
    scores, sims = [], []
    p = ref.num_protected
    for i in range(len(ref.blocks)):
        worst, worst_sim = 0.0, 0.0
        for b in range(len(ref.blocks[i]["pooled"])):
            mine, theirs = run.image(i, b), ref.image(i, b)
            keys, ref_keys = _keys(mine["in_source"]), _keys(theirs["in_source"])
            if sorted(keys) != sorted(ref_keys):
                continue
            position = {key: j for j, key in enumerate(ref_keys)}
            s_ref = theirs["scores"][[position[key] for key in keys]]
            worst = max(worst, float(np.abs(mine["scores"][p:] - s_ref[p:]).max() / s_ref[p:].max()))
            if keys == ref_keys:
                finite = np.isfinite(theirs["similarity"])
                diff = mine["similarity"][finite] - theirs["similarity"][finite]
                worst_sim = max(worst_sim, float(np.abs(diff).max()))
        scores.append(worst)
        sims.append(worst_sim)
    return scores, sims


def assert_reference_parity(name, ours, ref):
    """A float32 model run against the float64 reference: :func:`compare_runs` at the float32 bounds, the
    same compression blocks, and the logits of every image whose decisions agree at every block within
    FP32_LOGIT_RTOL of the largest reference logit. Prints the measured errors; returns ``(agree, err)``
    (per image, the largest logit error over the largest reference logit)."""
    log = []
    agree = compare_runs(ours, ref, score_rtol=FP32_SCORE_RTOL, sim_atol=FP32_SIM_ATOL, log=log)
    err = np.abs(ours.logits - ref.logits).max(axis=1) / np.abs(ref.logits).max()
    scores, sims = score_errors(ours, ref)
    print(f"{name}: max |logit error| / max |logit| = {err.max():.2e}; per block, score error / largest score "
          f"{np.array2string(np.array(scores), precision=1)}, similarity error "
          f"{np.array2string(np.array(sims), precision=1)}")
    print("\n".join(log))
    assert [b["block"] for b in ours.blocks] == [b["block"] for b in ref.blocks]
    if agree.any():
        assert err[agree].max() < FP32_LOGIT_RTOL, f"{name}: logits of images whose decisions agree: {err[agree]}"
    return agree, err


def assert_policy_case(case, run, ref):
    """What a parity case promises about policies: ``dense`` has no compression block, ``all_prune`` never
    pools, ``all_pool`` always pools, ``mixed`` pools some but not all images at the reference's first
    compression block (and ``run`` follows by the per-run policy rule of :func:`compare_runs`)."""
    pooled = [block["pooled"] for block in run.blocks]
    if case == "dense":
        assert not run.blocks
    elif case == "all_prune":
        assert not any(p.any() for p in pooled)
    elif case == "all_pool":
        assert all(p.all() for p in pooled)
    elif case == "mixed":
        assert 0 < ref.blocks[0]["pooled"].sum() < len(ref.logits)
    else:
        raise ValueError(f"unknown parity case {case!r}")
