"""Which PPT setting to evaluate next when tuning to a budget (``tools/tune.py``): the search space and the
two search strategies, staged local search (the tuner's) and random search (its baseline).

A setting (:class:`Candidate`) is the number of tokens removed in every block (zero outside the compression
blocks) and, per compression block, the share of images to pool there: 0 is prune-only, 1 pool-only, and
a share in between is PPT's adaptive policy with the threshold that pools that share of the calibration
images (:func:`mindppt.engine.analysis.calibrate_thresholds`), so the search moves in shares, which mean
the same in every block and for every model, and not in raw variances. GMACs depend on r and the blocks
only (both policies remove r tokens), so a GMACs budget constrains the structure and the shares move the
accuracy alone.

Both strategies evaluate at most ``budget`` distinct settings, each on every calibration image, through an
``evaluate(candidate)`` function returning a dict with ``top1`` and ``loss``; a setting asked for twice
is evaluated once. The best setting is the one of highest calibration top-1, ties broken by the lower
loss. Nothing here runs a model: :mod:`mindppt.engine.tune` supplies the GMACs of a schedule and the
evaluations.
"""
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["POLICIES", "POLICY_SHARE", "Candidate", "SearchSpace", "SearchRun", "BudgetSpent", "better",
           "staged_search", "random_search", "cheapest_within", "share_text"]

POLICIES = ("adaptive", "prune", "pool")
POLICY_SHARE = {"prune": 0.0, "pool": 1.0, "adaptive": 0.5}  # the share a policy starts from
SHARE_STEPS = (0.25, 0.125, 0.0625)  # the staged search's share moves, coarse to fine
WEIGHT_FACTOR = 1.5  # a per-block r move: one block's share of the removed tokens times or over this


def share_text(shares):
    return ",".join(f"{s:g}" for s in shares)


@dataclass(frozen=True)
class Candidate:
    """One setting: ``r`` tokens removed per block (a tuple with one int per block of the model, 0 where it
    does not compress, each within what the block can remove) and ``shares``, the pooled share per
    compression block (in block order)."""
    r: tuple
    shares: tuple = ()

    @property
    def blocks(self):
        return tuple(i for i, r in enumerate(self.r) if r)

    @property
    def policy(self):
        if not self.blocks:
            return "dense"
        if all(s == 1 for s in self.shares):
            return "pool"
        if all(s == 0 for s in self.shares):
            return "prune"
        return "adaptive"

    def key(self):
        """``(policy, r per block, blocks, shares)`` as written in tune.csv."""
        if self.policy == "dense":
            return ("dense", "0", "", "")
        return (self.policy, ",".join(map(str, self.r)), ",".join(map(str, self.blocks)), share_text(self.shares))


def better(row, other):
    """Whether evaluation ``row`` beats ``other`` (None: anything does): higher top-1, then lower loss."""
    return other is None or (row["top1"], -row["loss"]) > (other["top1"], -other["loss"])


class SearchSpace:
    """The settings a search may take.

    ``depth``: blocks of the model; ``blocks``: the blocks that may compress; ``gmacs(r)`` and
    ``removed(r)``: GMACs of the model removing ``r[i]`` tokens in block ``i``, and the tokens each block then
    really removes (at most half of those it receives); ``uniform_r``: one r for every compression block
    instead of one per block; ``policies``: a subset of :data:`POLICIES` (adaptive lets every block have
    its own share, prune and pool set them all to 0 or 1)."""

    def __init__(self, depth, blocks, gmacs, removed, *, uniform_r=False, policies=POLICIES):
        self.depth = int(depth)
        self.blocks = tuple(sorted(set(int(b) for b in blocks)))
        self.gmacs, self.removed = gmacs, removed
        self.uniform_r = bool(uniform_r)
        self.policies = tuple(p for p in POLICIES if p in policies)
        self.max_r = max(1, self.removed([10**6] * self.depth)[0])  # the most any block can remove

    def r_vector(self, blocks, scale, weights):
        r = [0] * self.depth
        for block, weight in zip(blocks, weights):
            r[block] = max(1, int(round(scale * weight)))
        return tuple(self.removed(r))

    def least_gmacs(self):
        """The GMACs of the most compressed setting: every allowed block removing all it can."""
        return self.gmacs(self.r_vector(self.blocks, self.max_r, [1.0] * len(self.blocks)))

    def fit(self, blocks, target, weights=None):
        """The r per block (a tuple over all blocks) that compresses ``blocks`` in the proportions of
        ``weights`` (default, and with ``uniform_r``: equal) as little as meets ``target`` GMACs, the slack
        of rounding given back block by block from the last; None when even the most it can remove at those
        blocks costs more. Blocks that then remove nothing (the tokens ran out) drop out."""
        blocks = tuple(sorted(blocks))
        if self.uniform_r or weights is None:
            weights = [1.0] * len(blocks)
        weights = [float(w) / max(weights) for w in weights]
        at = lambda scale: self.r_vector(blocks, scale, weights)  # noqa: E731
        top = self.max_r / min(weights)
        if not blocks or self.gmacs(at(top)) > target:
            return None
        if self.uniform_r:
            lo, hi = 0, int(self.max_r)  # the least integer r meeting the target
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if self.gmacs(at(mid)) <= target else (mid, hi)
            r = at(hi)
        else:
            lo, hi = 0.0, top
            for _ in range(40):
                mid = (lo + hi) / 2
                lo, hi = (lo, mid) if self.gmacs(at(mid)) <= target else (mid, hi)
            r = list(at(hi))
            for block in reversed(blocks):
                while r[block] > 1 and self.gmacs(tuple(self.removed(r[:block] + [r[block] - 1] + r[block + 1:]))) \
                        <= target:
                    r = list(self.removed(r[:block] + [r[block] - 1] + r[block + 1:]))
            r = tuple(r)
        return r if any(r) else None

    def start_structures(self, config_blocks=None, paper_blocks=None):
        """Block sets to start from, each with equal r: the config's, the paper's positions, and every
        allowed block from block 1 on (spreading the removal thinly); restricted to the allowed blocks."""
        spread = tuple(b for b in self.blocks if b >= 1) or self.blocks
        out = []
        for shape in (config_blocks, paper_blocks, spread, self.blocks):
            shape = tuple(b for b in (shape or ()) if b in self.blocks)
            if shape and shape not in out:
                out.append(shape)
        return out

    def policy_shares(self, count):
        """The shares of each allowed policy for ``count`` compression blocks: pool, prune, adaptive (0.5)."""
        order = [p for p in ("pool", "prune", "adaptive") if p in self.policies]
        return [tuple([POLICY_SHARE[p]] * count) for p in order]

    def carry_shares(self, candidate, r):
        """Shares for structure ``r``, taken from ``candidate``: a kept block keeps its share, a new block
        takes that of the nearest old block."""
        old = dict(zip(candidate.blocks, candidate.shares))
        blocks = [i for i, v in enumerate(r) if v]
        if not old:
            return tuple([POLICY_SHARE[self.policies[0]]] * len(blocks))
        return tuple(old.get(b, old[min(old, key=lambda o: (abs(o - b), o))]) for b in blocks)


class BudgetSpent(Exception):
    """The search asked for one evaluation more than its budget."""


class SearchRun:
    """The evaluations of one search: ``evaluate`` paid for at most ``budget`` times; a setting in ``memo``
    (shared by the levels of :func:`cheapest_within`) costs nothing. ``rows``: this search's settings and
    their rows; ``best``: the best of them."""

    def __init__(self, evaluate, budget, memo=None):
        self.evaluate, self.budget = evaluate, int(budget)
        self.memo = {} if memo is None else memo
        self.rows = {}
        self.best = None
        self.spent = 0

    def __call__(self, candidate):
        if candidate in self.memo:
            row = self.memo[candidate]
        else:
            if self.spent >= self.budget:
                raise BudgetSpent
            self.spent += 1
            row = self.memo[candidate] = self.evaluate(candidate)
        self.rows[candidate] = row
        if self.best is None or better(row, self.rows[self.best]):
            self.best = candidate
        return row


def _neighbours(space, current, target, step):
    """Settings one move away from ``current``, share moves and structure moves interleaved: each
    compression block's share up and down by ``step`` (adaptive allowed); each compression block moved one
    block earlier or later, its share of r raised or lowered (r per block), a block added next to the
    others or one dropped, r re-fitted to ``target`` each time."""
    shares = []
    if "adaptive" in space.policies:
        for j, s in enumerate(current.shares):
            for new in (s - step, s + step):
                if 0.0 <= new <= 1.0:
                    shares.append(Candidate(current.r, current.shares[:j] + (round(new, 6),) + current.shares[j + 1:]))
    structures = []
    blocks, weights = list(current.blocks), [current.r[b] for b in current.blocks]
    for j, b in enumerate(blocks):
        for nb in (b - 1, b + 1):
            if nb in space.blocks and nb not in blocks:
                structures.append((blocks[:j] + [nb] + blocks[j + 1:], weights))
        if not space.uniform_r:
            for factor in (WEIGHT_FACTOR, 1 / WEIGHT_FACTOR):
                structures.append((blocks, weights[:j] + [weights[j] * factor] + weights[j + 1:]))
    for nb in (blocks[0] - 1, blocks[-1] + 1):
        if nb in space.blocks:
            structures.append((sorted(blocks + [nb]), None))
    for j in range(len(blocks)):
        if len(blocks) > 1:
            structures.append((blocks[:j] + blocks[j + 1:], weights[:j] + weights[j + 1:]))
    moved = []
    for new_blocks, new_weights in structures:
        order = sorted(range(len(new_blocks)), key=lambda i: new_blocks[i])
        r = space.fit([new_blocks[i] for i in order], target,
                      None if new_weights is None else [new_weights[i] for i in order])
        if r is not None and r != current.r:
            moved.append(Candidate(r, space.carry_shares(current, r)))
    out = []
    for i in range(max(len(shares), len(moved))):
        out += shares[i:i + 1] + moved[i:i + 1]
    return out


def staged_search(space, run, target, config_blocks=None, paper_blocks=None, good_enough=None):
    """The tuner's search for the best setting within ``target`` GMACs, on ``run`` (:class:`SearchRun`).

    1. Policies: the first start structure (the config's blocks, else the paper's positions; one r fitted
       to the target) with each allowed policy: pool-only, prune-only, adaptive pooling half the images.
    2. Structures: the other start structures (:meth:`SearchSpace.start_structures`) with the shares of
       the best so far.
    3. Local search from the best: its neighbours (:func:`_neighbours`: a share up or down, a block moved,
       added or dropped, r shifted between blocks) in turn; the first better one becomes the best and the
       neighbourhood is rebuilt around it. When none is better the share step halves (0.25, 0.125, 0.0625);
       after the last the search has converged.

    Stops when the budget is spent, at convergence, or as soon as an evaluation satisfies ``good_enough``
    (a predicate on the row). Returns the best candidate (None if nothing within the target was found)."""
    def ask(candidate):
        row = run(candidate)
        if good_enough is not None and good_enough(row):
            raise _Reached

    try:
        starts = [r for r in (space.fit(s, target) for s in space.start_structures(config_blocks, paper_blocks))
                  if r is not None]
        if not starts:
            return None
        for shares in space.policy_shares(sum(1 for v in starts[0] if v)):
            ask(Candidate(starts[0], shares))
        policy_best = run.best
        for r in starts[1:]:
            ask(Candidate(r, space.carry_shares(policy_best, r)))
        for step in SHARE_STEPS:
            improved = True
            while improved:
                best = run.best
                for candidate in _neighbours(space, best, target, step):
                    if candidate not in run.rows:
                        ask(candidate)
                        if run.best != best:
                            break
                improved = run.best != best
    except (BudgetSpent, _Reached):
        pass
    return run.best


class _Reached(Exception):
    """An evaluation satisfied the search's ``good_enough``."""


def random_search(space, run, target, seed):
    """The baseline: settings drawn at random until the budget of ``run`` is spent: each allowed block
    compresses with probability 1/2 (at least one), with r per block in random proportions (0.5 to 2,
    log-uniform; equal with ``uniform_r``) fitted to ``target``; a policy drawn from the allowed ones, and
    for adaptive a share per block uniform in [0, 1]. Draws that cannot meet the target or were drawn
    before are drawn again (at most 100 draws per evaluation). Returns the best candidate."""
    rng = np.random.default_rng(seed)
    blocks = np.asarray(space.blocks)
    draws = 0
    try:
        while run.spent < run.budget and draws < 100 * run.budget:
            draws += 1
            chosen = blocks[rng.random(len(blocks)) < 0.5]
            if not len(chosen):
                continue
            weights = np.exp(rng.uniform(math.log(0.5), math.log(2.0), len(chosen)))
            r = space.fit(chosen.tolist(), target, weights.tolist())
            if r is None:
                continue
            policy = space.policies[rng.integers(len(space.policies))]
            count = sum(1 for v in r if v)
            shares = (tuple(float(s) for s in np.round(rng.uniform(0.0, 1.0, count), 3)) if policy == "adaptive"
                      else tuple([POLICY_SHARE[policy]] * count))
            candidate = Candidate(r, shares)
            if candidate not in run.rows:
                run(candidate)
    except BudgetSpent:
        pass
    return run.best


def cheapest_within(space, run, floor, dense_gmacs, config_blocks=None, paper_blocks=None, tolerance=0.02):
    """The tuner's search for the cheapest setting whose calibration top-1 is at least ``floor``: bisection
    on the GMACs level between the most compressed setting and the dense model (which reaches it by
    definition). At each level a :func:`staged_search` with a quarter of the budget (at least 3
    evaluations; settings evaluated at an earlier level cost nothing) stops at the first setting reaching
    ``floor``: the level is feasible and the next one cheaper; otherwise the next one is dearer. Ends when
    the budget of ``run`` is spent or the interval is narrower than ``tolerance`` of the dense GMACs.
    Returns the cheapest candidate reaching ``floor`` (ties: the better), None when none did."""
    lo, hi = space.least_gmacs(), dense_gmacs
    per_level = max(3, run.budget // 4)
    reached = lambda row: row["top1"] >= floor  # noqa: E731
    while run.spent < run.budget and hi - lo > tolerance * dense_gmacs:
        level_gmacs = (lo + hi) / 2
        level = SearchRun(run.evaluate, min(per_level, run.budget - run.spent), memo=run.memo)
        staged_search(space, level, level_gmacs, config_blocks, paper_blocks, good_enough=reached)
        run.spent += level.spent
        run.rows.update(level.rows)
        found = [c for c, row in level.rows.items() if reached(row)]
        if found:
            hi = min(space.gmacs(c.r) for c in found)
        else:
            lo = level_gmacs
    feasible = [c for c, row in run.rows.items() if reached(row)]
    if not feasible:
        return None
    return min(feasible, key=lambda c: (space.gmacs(c.r), -run.rows[c]["top1"], run.rows[c]["loss"]))
