"""The cross-run decision rules of tests/decision_checks.py on hand-made runs (no model): near-ties may
go either way, nothing else may. Runs are built with the reference's own prune and pool."""
import numpy as np
import ppt_reference as ref
import pytest
from decision_checks import U64, Run, check_run, compare_runs

N = 13  # class token + 12
R = 4


def make_run(name, scores, keys, threshold, num_protected=1):
    """One compression block (block 3) of the images whose scores (B, N) and keys (B, 1, N, D) are given,
    decided by the spec (ppt_reference.prune / pool; ``num_protected`` 2: a distilled DeiT's rule)."""
    fields = {key: [] for key in ("variance", "pooled", "kept", "size", "source", "scores", "similarity")}
    for s, k in zip(scores, keys):
        variance = float(np.var(s[num_protected:], ddof=1))
        pooled = variance < threshold
        x, size, source = np.zeros((N, 1)), np.ones(N), np.eye(N, dtype=np.int64)
        if pooled:
            _, size, source, kept = ref.pool(x, size, source, k, R, num_protected)
        else:
            _, size, source, kept = ref.prune(x, size, source, s, R)
        for key, value in zip(fields, (variance, pooled, kept, size, source, s, ref.similarity(k, num_protected))):
            fields[key].append(value)
    block = {key: np.array(value) for key, value in fields.items()}
    block["block"] = 3
    return Run(name, np.zeros((len(scores), 2)), [block], threshold, U64, num_protected=num_protected)


def _scores():
    """Positive scores summing to 1, class token 2, the 8th and 9th best (the prune cut: 8 of 12 are
    kept) tied within 1e-7, in shuffled positions."""
    values = np.array([0.2, 0.15, 0.12, 0.1, 0.09, 0.08, 0.07, 0.06, 0.0599999, 0.03, 0.02, 0.02])
    order = np.random.default_rng(0).permutation(12)
    s = np.concatenate([[2.0], values[order] / values.sum()])
    rank = {v: 1 + int(np.flatnonzero(values[order] == v)[0]) for v in values}
    return s, rank[0.06], rank[0.0599999], rank[0.2], rank[0.02]


def _keys():
    """Keys with one A token (2) whose two best B matches (1 and 3) tie, and is certainly merged."""
    rng = np.random.default_rng(1)
    k = rng.standard_normal((1, N, 8))
    k[0, 3] = k[0, 1] + 0.3 * rng.standard_normal(8)
    k[0, 1] /= np.linalg.norm(k[0, 1])
    k[0, 3] /= np.linalg.norm(k[0, 3])
    k[0, 2] = k[0, 1] + k[0, 3]
    return k


def test_near_tie_at_the_prune_cut_may_swap_a_far_one_may_not():
    s, tied_a, tied_b, top, bottom = _scores()
    keys = _keys()[None]
    a = make_run("a", s[None], keys, threshold=0.0)
    swapped = s.copy()
    swapped[[tied_a, tied_b]] = swapped[[tied_b, tied_a]]  # the two near-tied tokens trade places
    b = make_run("b", swapped[None], keys, threshold=0.0)
    assert set(a.blocks[0]["kept"][0]) != set(b.blocks[0]["kept"][0])
    log = []
    agree = compare_runs(b, a, score_rtol=1e-5, sim_atol=1e-9, log=log)
    assert not agree[0] and "near-tied tokens at the cut" in log[0]

    far = s.copy()
    far[[top, bottom]] = far[[bottom, top]]  # the best and a dropped token trade places
    with pytest.raises(AssertionError, match="scores differ"):
        compare_runs(make_run("far", far[None], keys, threshold=0.0), a, score_rtol=1e-5, sim_atol=1e-9)
    # the same far swap in the decisions alone (scores unchanged): the run contradicts its own scores
    tampered = make_run("tampered", s[None], keys, threshold=0.0)
    kept = tampered.blocks[0]["kept"][0]
    dropped = np.setdiff1d(np.arange(1, N), kept)
    kept[kept == top] = dropped[0]
    tampered.blocks[0]["source"][0] = np.eye(N)[kept]
    with pytest.raises(AssertionError, match="a dropped token outscores a kept one|descending"):
        compare_runs(tampered, a, score_rtol=1e-5, sim_atol=1e-9)


def test_policy_may_differ_only_near_the_threshold():
    s, tied_a, _, top, bottom = _scores()
    keys = _keys()[None]
    variance = np.var(s[1:], ddof=1)
    nudged = s.copy()
    nudged[top] += 1e-6
    nudged[bottom] -= 1e-6  # still sums to 1; variance a little larger
    between = (variance + np.var(nudged[1:], ddof=1)) / 2
    log = []
    agree = compare_runs(make_run("b", nudged[None], keys, between), make_run("a", s[None], keys, between),
                         score_rtol=1e-4, sim_atol=1e-9, log=log)
    assert not agree[0] and "policy differs" in log[0]
    # far from the threshold: a flipped policy contradicts the run's own variance
    far = make_run("flipped", s[None], keys, threshold=2 * variance)
    assert far.blocks[0]["pooled"][0]
    far.blocks[0]["pooled"][0] = False
    with pytest.raises(AssertionError, match="policy is not variance < threshold"):
        compare_runs(far, make_run("a", s[None], keys, 2 * variance), score_rtol=1e-4, sim_atol=1e-9)
    # a variance that is not the variance of the scores
    wrong = make_run("wrong", s[None], keys, threshold=0.0)
    wrong.blocks[0]["variance"] = wrong.blocks[0]["variance"] * 1.01
    with pytest.raises(AssertionError, match="is not the variance of the scores"):
        check_run(wrong)


def test_pooling_may_merge_a_near_tie_either_way_nothing_else():
    s, *_ = _scores()
    keys = _keys()
    toward = {}
    for name, target in (("a", 1), ("b", 3)):
        k = keys.copy()
        k[0, 2] += 1e-7 * k[0, target]  # token 2 leans towards B token `target`
        toward[name] = make_run(name, s[None], k[None], threshold=1e9)
    a, b = toward["a"], toward["b"]
    assert a.blocks[0]["pooled"][0] and 1 in a.blocks[0]["kept"][0]
    row_a, row_b = (np.flatnonzero(run.blocks[0]["source"][0][:, 2])[0] for run in (a, b))
    assert a.blocks[0]["kept"][0][row_a] == 1 and b.blocks[0]["kept"][0][row_b] == 3
    log = []
    agree = compare_runs(b, a, score_rtol=1e-9, sim_atol=1e-6, log=log)
    assert not agree[0] and "merged near-tied tokens differently" in log[0]
    # same keys, equal merges: equal outputs, exactly
    assert compare_runs(a, a, score_rtol=1e-9, sim_atol=1e-9)[0]
    # a merge into a far B token: contradicts the run's own similarities
    tampered = make_run("tampered", s[None], keys[None], threshold=1e9)
    block = tampered.blocks[0]
    source = block["source"][0]
    holder = np.flatnonzero(source[:, 2])[0]
    far_b = int(np.argmin(block["similarity"][0][1]))  # the worst B match of A token 2
    far_row = int(np.flatnonzero(block["kept"][0] == 2 * far_b + 1)[0])
    source[holder, 2], source[far_row, 2] = 0, 1
    block["size"][0] = source.sum(axis=1)
    with pytest.raises(AssertionError, match="not merged into its best match"):
        check_run(tampered)


# --------------------------------------------------------------------------------------------
# Distilled DeiT: class and distillation tokens protected (num_protected = 2)
# --------------------------------------------------------------------------------------------

def _distilled_scores():
    """Class 3, distillation 2, then 11 positive scores summing to 1 (no near-ties)."""
    values = np.array([0.2, 0.15, 0.12, 0.1, 0.09, 0.08, 0.07, 0.06, 0.05, 0.03, 0.01])
    order = np.random.default_rng(2).permutation(11)
    return np.concatenate([[3.0, 2.0], values[order] / values.sum()])


def _retamper(run, kept=None, source=None):
    """``run``'s single image with other kept indices and/or source rows (sizes follow the sources)."""
    block = run.blocks[0]
    if kept is not None:
        block["kept"][0] = kept
        block["source"][0] = np.eye(N, dtype=np.int64)[kept]
    if source is not None:
        block["source"][0] = source
    block["size"][0] = block["source"][0].sum(axis=1)
    return run


def test_distilled_runs_follow_the_two_token_rule():
    s, keys = _distilled_scores(), _keys()
    for threshold in (0.0, 1e9):
        run = make_run("distilled", s[None], keys[None], threshold, num_protected=2)
        kept = run.blocks[0]["kept"][0]
        assert list(kept[:2]) == [0, 1] and run.blocks[0]["pooled"][0] == (threshold > 0)
        assert compare_runs(run, run, score_rtol=1e-9, sim_atol=1e-9)[0]
    # the same run read with the class token alone protected breaks the one-token rule
    plain = make_run("distilled", s[None], keys[None], 0.0, num_protected=2)
    plain.num_protected = 1
    with pytest.raises(AssertionError, match="class token not first"):
        check_run(plain)


def test_distilled_pruning_that_drops_or_moves_the_distillation_token_is_rejected():
    s, keys = _distilled_scores(), _keys()
    kept = make_run("a", s[None], keys[None], 0.0, num_protected=2).blocks[0]["kept"][0]
    dropped = np.setdiff1d(np.arange(N), kept)
    # the official rule: the distillation token ranked with the patches (here the lowest) and pruned, so the
    # best remaining patch moves to position 1
    official = np.concatenate([[0], kept[2:], [dropped[0]]])
    moved = np.concatenate([[0], kept[2:3], [1], kept[3:]])  # kept, but at position 2
    for name, tampered, match in (("dropped", official, "not first"), ("moved", moved, "not first")):
        run = _retamper(make_run(name, s[None], keys[None], 0.0, num_protected=2), kept=tampered)
        with pytest.raises(AssertionError, match=match):
            check_run(run)
    # the official scores (class token 2, the distillation token scored like a patch) contradict the rule
    official_scores = s.copy()
    official_scores[:2] = [2.0, 0.0]
    run = make_run("scored", s[None], keys[None], 0.0, num_protected=2)
    run.blocks[0]["scores"][0] = official_scores
    with pytest.raises(AssertionError, match="class and distillation tokens not first"):
        check_run(run)
    run = make_run("variance", s[None], keys[None], 0.0, num_protected=2)
    run.blocks[0]["variance"][0] = np.var(s[1:], ddof=1)  # the distillation token's score 2 included
    with pytest.raises(AssertionError, match="is not the variance of the scores"):
        check_run(run)


def test_distilled_pooling_that_merges_into_or_moves_the_distillation_token_is_rejected():
    s, keys = _distilled_scores(), _keys()
    good = make_run("a", s[None], keys[None], 1e9, num_protected=2)
    kept, source = good.blocks[0]["kept"][0], good.blocks[0]["source"][0]
    # an unmerged A token's patches moved into the distillation token's row
    merged_in = source.copy()
    a_row = 2  # the first unmerged A token after the class token
    assert kept[a_row] % 2 == 0 and kept[a_row] > 0
    merged_in[1] += merged_in[a_row]
    merged_in[a_row] = 0
    run = _retamper(make_run("merged into", s[None], keys[None], 1e9, num_protected=2), source=merged_in)
    with pytest.raises(AssertionError, match="dropped, moved or merged"):
        check_run(run)
    # ToMe's plain layout (all unmerged A tokens, then the B tokens): the distillation token not at 1
    n_unmerged = N - R - N // 2
    plain = np.concatenate([[0], kept[2:n_unmerged + 1], [1], kept[n_unmerged + 1:]])
    run = _retamper(make_run("plain layout", s[None], keys[None], 1e9, num_protected=2), kept=plain)
    with pytest.raises(AssertionError, match="not first"):
        check_run(run)
    # a run that protects one token is not compared with one that protects two
    one = make_run("one", _scores()[0][None], keys[None], 1e9)
    with pytest.raises(AssertionError, match="protect 2 and 1 tokens|protect 1 and 2 tokens"):
        compare_runs(good, one, score_rtol=1e-9, sim_atol=1e-9)
