"""The built-in synthetic catalog (the default dataset) and its ground truth.

Generative model (all deterministic from `seed`, generated in fixed-size blocks of items/users so
the output does not depend on shard sizes and memory stays flat at 1M items):

- Items: `C` clusters with unit centers `mu_c`; item `i` has a cluster, latent factors
  `v_i = mu_c + noise` and a popularity bias `b_i`.
- Features: `text`/`image` = `v_i @ P_m + feature_noise * eps` (fixed random projections of
  different widths); `attr` = a category id tied to the cluster plus brand-like ids drawn from a
  small cluster-specific pool.
- Users: preference `p_u` near the centers of two liked clusters. True utility
  `utility(u, i) = UTIL_SCALE * p_u . v_i + b_i`; item `i` is relevant to `u` when its utility is at
  least `u`'s threshold, the `relevant_share` quantile of `u`'s utilities over the catalog (over a
  fixed sample of `REFERENCE_ITEMS` items for larger catalogs).
- Popularity (`popularity: zipf`): the items shown from a cluster are drawn by a power law over
  their rank in the cluster, so a few items take a large share of the interactions.
- Exposure bias: user `u` only ever sees item `i` when `hash(seed, u, i) < exposure`, a pseudo-random
  pair property with no structure a model could learn, so relevant-but-unexposed items exist and
  look exactly like relevant exposed ones.
- Rejections (`dislike_rate` > 0): after a consumed item, with that probability, an item the user was
  shown from the same cluster (exposed) and does not like (not relevant), never consumed: observed
  negative feedback whose truth is known (`SyntheticCatalog._rejections`).
- Sequences: each step picks a cluster from `(1 - drift) * softmax(p_u . mu / T) +
  drift * [successor of the last item's cluster]`, then an item by a softmax over `CANDIDATES`
  items drawn from that cluster (exposed, not yet consumed) with logits
  `(utility + drift * UTIL_SCALE * v_last . v_i) / T`: O(CANDIDATES) per step, never O(N).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rodpo_dist.config import SyntheticConfig
from rodpo_dist.data.features import Modality, ModalitySpec
from rodpo_dist.data.rejections import Rejections
from rodpo_dist.data.sources import Interactions

GEN_BLOCK = 65536
"""Items per generation block (fixed, so features do not depend on how they are requested)."""
USER_BLOCK = 4096
CANDIDATES = 64
REFERENCE_ITEMS = 8192
UTIL_SCALE = 3.0
ITEM_SPREAD = 1.0
USER_SPREAD = 0.5
POPULARITY_SKEW = 0.5
BRANDS_PER_CLUSTER = 4
THRESHOLD_MARGIN = 1e-9
TRUTH_FILE = "truth.npz"
_MAX_RETRIES = 1000


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class GroundTruth:
    """True utilities, relevance and exposure of a synthetic catalog, for any (user, item) pair."""

    def __init__(self, user_factors: np.ndarray, item_factors: np.ndarray, item_bias: np.ndarray,
                 thresholds: np.ndarray, exposure: float, seed: int) -> None:
        self.user_factors = user_factors
        self.item_factors = item_factors
        self.item_bias = item_bias
        self.thresholds = thresholds
        self.exposure = float(exposure)
        self.seed = int(seed)

    @classmethod
    def load(cls, directory: str | Path) -> GroundTruth:
        """Load `truth.npz` from a prepared synthetic dataset folder."""
        with np.load(Path(directory) / TRUTH_FILE, allow_pickle=False) as z:
            return cls(z["user_factors"], z["item_factors"], z["item_bias"], z["thresholds"],
                       float(z["exposure"]), int(z["seed"]))

    def save(self, directory: str | Path) -> None:
        np.savez(Path(directory) / TRUTH_FILE, user_factors=self.user_factors, item_factors=self.item_factors,
                 item_bias=self.item_bias, thresholds=self.thresholds, exposure=self.exposure, seed=self.seed)

    def utility(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """True utility (float64); `users` [B], `items` [B, M] or [B]."""
        users, items = np.asarray(users), np.asarray(items)
        u = self.user_factors[users].astype(np.float64).reshape(users.shape + (1,) * (items.ndim - users.ndim) + (-1,))
        return UTIL_SCALE * (u * np.take(self.item_factors, items, axis=0)).sum(-1) + self.item_bias[items]

    def utility_matrix(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """True utility of every user in `users` [B] for every item in `items` [M] -> [B, M] (float64)."""
        u = self.user_factors[users].astype(np.float64)
        return UTIL_SCALE * u @ self.item_factors[items].T.astype(np.float64) + self.item_bias[items]

    def is_relevant(self, users, items) -> np.ndarray:
        """Whether each item is relevant to its user (`users` [B], `items` [B, M]); padding 0 never is."""
        users, items = _numpy(users), _numpy(items)
        thr = self.thresholds[users].reshape(users.shape + (1,) * (items.ndim - users.ndim))
        return (self.utility(users, items) >= thr) & (items > 0)

    def relevant_matrix(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """`is_relevant` of every user in `users` [B] for every item in `items` [M] -> [B, M], through
        `utility_matrix` (one product: no [B, M, d] intermediate)."""
        return (self.utility_matrix(users, items) >= self.thresholds[users][:, None]) & (items > 0)

    def is_exposed(self, users, items) -> np.ndarray:
        """Whether the user could ever see the item (the exposure-bias mask), same shapes as `is_relevant`."""
        users, items = _numpy(users), _numpy(items)
        u = users.reshape(users.shape + (1,) * (items.ndim - users.ndim)).astype(np.uint64)
        with np.errstate(over="ignore"):
            key = _splitmix64((u << np.uint64(32)) ^ items.astype(np.uint64) ^ _splitmix64(np.uint64(self.seed)))
        return (key >> np.uint64(11)).astype(np.float64) / float(1 << 53) < self.exposure

    def false_negative_rate(self, users, negatives) -> float:
        """Share of sampled negatives [B, M] that are in fact relevant to their user."""
        return float(self.is_relevant(users, negatives).mean())

    def relevant_unexposed_rate(self, users, items) -> float:
        """Share of the given items that are relevant to their user but never exposed to them."""
        return float((self.is_relevant(users, items) & ~self.is_exposed(users, items)).mean())


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sample_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.minimum((probs.cumsum(axis=1) < rng.random((len(probs), 1))).sum(axis=1), probs.shape[1] - 1)


class SyntheticCatalog:
    """Generates the synthetic catalog described in the module docstring."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg
        n, d, c = cfg.num_items, cfg.latent_dim, cfg.num_clusters
        rng = np.random.default_rng([cfg.seed, 0])
        centers = rng.standard_normal((c, d))
        self.centers = (centers / np.linalg.norm(centers, axis=1, keepdims=True)).astype(np.float32)
        self.projections = {"text": rng.standard_normal((d, cfg.text_dim)).astype(np.float32),
                            "image": rng.standard_normal((d, cfg.image_dim)).astype(np.float32)}
        self.item_cluster = np.zeros(n + 1, dtype=np.int32)
        item_factors = np.zeros((n + 1, d), dtype=np.float32)
        item_bias = np.zeros(n + 1, dtype=np.float32)
        for start in range(0, n + 1, GEN_BLOCK):
            stop = min(start + GEN_BLOCK, n + 1)
            brng = np.random.default_rng([cfg.seed, 1, start // GEN_BLOCK])
            cl = brng.integers(c, size=stop - start)
            self.item_cluster[start:stop] = cl
            item_factors[start:stop] = self.centers[cl] + ITEM_SPREAD / np.sqrt(d) * brng.standard_normal((stop - start, d))
            item_bias[start:stop] = POPULARITY_SKEW * brng.standard_normal(stop - start)
        item_factors[0], item_bias[0] = 0.0, 0.0
        members = np.argsort(self.item_cluster[1:], kind="stable") + 1
        sizes = np.bincount(self.item_cluster[1:], minlength=c)
        self.cluster_items, self.cluster_sizes = members.astype(np.int64), sizes
        self.cluster_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        nonempty = np.flatnonzero(sizes)
        self.successor = nonempty[rng.integers(len(nonempty), size=c)]
        self._block = lru_cache(maxsize=6)(self._make_block)
        self.truth = GroundTruth(np.zeros((cfg.num_users + 1, d), np.float32), item_factors, item_bias,
                                 np.full(cfg.num_users + 1, np.inf), cfg.exposure, cfg.seed)

    # ------------------------------------------------------------------ users and sequences

    def interactions(self, *, progress: bool = False) -> Interactions:
        """Generate all user sequences (users in blocks of `USER_BLOCK`) and fill the thresholds."""
        lengths, flat = [], []
        for start in tqdm(range(1, self.cfg.num_users + 1, USER_BLOCK), desc="synthetic users", disable=not progress):
            seqs, lens = self._user_block(start, min(start + USER_BLOCK, self.cfg.num_users + 1))
            lengths.append(lens)
            flat.append(seqs[np.arange(seqs.shape[1]) < lens[:, None]])
        self._fill_thresholds(progress)
        lens = np.concatenate(lengths)
        data = Interactions(np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), np.concatenate(flat), self.cfg.num_items)
        if self.cfg.dislike_rate > 0:
            data.rejections = self._rejections(data)
        return data

    def _rejections(self, data: Interactions) -> Rejections:
        """Observed rejections from the ground truth (`dislike_rate`): after each consumed item, with that
        probability, the user turns down one item it was shown: of `CANDIDATES` items drawn from the
        consumed item's cluster, the exposed ones it does not like (not relevant) and never consumed,
        the most attractive by the choice model's own score. Recorded between that step and the next."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, 5])
        users = np.repeat(np.arange(1, data.num_users + 1), data.lengths)
        step = np.arange(len(data.items)) - np.repeat(data.offsets[:-1], data.lengths)
        chosen = np.flatnonzero(rng.random(len(users)) < cfg.dislike_rate)
        width = int(data.lengths.max())
        seqs = np.zeros((data.num_users + 1, width), np.int64)
        seqs[users, step] = data.items
        out_items = np.zeros(len(chosen), np.int64)
        for lo in range(0, len(chosen), 8192):
            rows = chosen[lo:lo + 8192]
            u, clusters = users[rows], self.item_cluster[data.items[rows]]
            pos = self.cluster_starts[clusters][:, None] + self._ranks(self.cluster_sizes[clusters], rng)
            cand = self.cluster_items[pos]
            ok = self.truth.is_exposed(u, cand) & ~self.truth.is_relevant(u, cand)
            ok &= ~(cand[:, :, None] == seqs[u][:, None, :]).any(-1)
            gumbel = -np.log(np.maximum(rng.standard_exponential(cand.shape), 1e-30))
            score = np.where(ok, self.truth.utility(u, cand) / cfg.temperature + gumbel, -np.inf)
            best = cand[np.arange(len(rows)), score.argmax(1)]
            out_items[lo:lo + len(rows)] = np.where(ok.any(1), best, 0)
        position = step[chosen] + 1  # after the consumed item, before the next one
        return Rejections.build(data, users[chosen], out_items, position - 0.5, position=position)

    def _user_block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        cfg, d = self.cfg, self.cfg.latent_dim
        rng = np.random.default_rng([cfg.seed, 2, start // USER_BLOCK])
        n = stop - start
        users = np.arange(start, stop)
        liked = rng.integers(cfg.num_clusters, size=(n, 2))
        pref = self.centers[liked].sum(axis=1) + USER_SPREAD / np.sqrt(d) * rng.standard_normal((n, d))
        self.truth.user_factors[start:stop] = pref / np.linalg.norm(pref, axis=1, keepdims=True)
        logits = UTIL_SCALE * self.truth.user_factors[users] @ self.centers.T / cfg.temperature
        cluster_pref = _softmax(np.where(self.cluster_sizes > 0, logits, -np.inf))
        lens = rng.integers(cfg.min_seq_len, cfg.max_seq_len + 1, size=n)
        seqs = np.zeros((n, cfg.max_seq_len), dtype=np.int32)
        for t in range(cfg.max_seq_len):
            probs = cluster_pref
            if t > 0:
                nxt = np.zeros_like(cluster_pref)
                nxt[np.arange(n), self.successor[self.item_cluster[seqs[:, t - 1]]]] = 1.0
                probs = (1 - cfg.drift) * cluster_pref + cfg.drift * nxt
            rows = np.arange(n)
            for attempt in range(_MAX_RETRIES):
                # a few tries from the model's cluster choice, then any non-empty cluster
                clusters = (_sample_rows(probs[rows], rng) if attempt < 3
                            else rng.choice(np.flatnonzero(self.cluster_sizes), size=len(rows)))
                chosen = self._choose(users[rows], clusters, seqs[rows], t, rng)
                seqs[rows, t] = chosen
                rows = rows[chosen == 0]
                if not len(rows):
                    break
            else:
                raise RuntimeError("synthetic generation could not find an unseen exposed item")
        return seqs, lens

    def _choose(self, users: np.ndarray, clusters: np.ndarray, history: np.ndarray, t: int,
                rng: np.random.Generator) -> np.ndarray:
        """One item per row from `CANDIDATES` exposed, unseen items of its cluster (0 where none qualify)."""
        cfg = self.cfg
        pos = self.cluster_starts[clusters][:, None] + self._ranks(self.cluster_sizes[clusters], rng)
        cand = self.cluster_items[pos]
        ok = self.truth.is_exposed(users, cand)
        for j in range(t):
            ok &= cand != history[:, j:j + 1]
        # utility plus the pull of the last item, in one contraction: (p_u + drift * v_last) . v_i
        taste = self.truth.user_factors[users]
        if t > 0:
            taste = taste + cfg.drift * self.truth.item_factors[history[:, t - 1]]
        factors = np.take(self.truth.item_factors, cand, axis=0)  # np.take: ~4x faster than fancy indexing
        score = UTIL_SCALE * np.matmul(factors, taste[:, :, None])[..., 0] + self.truth.item_bias[cand]
        gumbel = -np.log(np.maximum(rng.standard_exponential(score.shape, dtype=np.float32), 1e-30))
        score = np.where(ok, score / cfg.temperature + gumbel, -np.inf)
        best = score.argmax(axis=1)
        return np.where(ok.any(axis=1), cand[np.arange(len(cand)), best], 0).astype(np.int32)

    def _ranks(self, sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """`CANDIDATES` positions per row within clusters of `sizes`: uniform, or (`popularity: zipf`)
        rank r = floor(x) - 1 of a continuous power law x ~ x ** -s on [1, size + 1)."""
        u = rng.random((len(sizes), CANDIDATES))
        size = sizes[:, None].astype(np.float64)
        if self.cfg.popularity == "normal":
            return (u * size).astype(np.int64)
        s = self.cfg.zipf_exponent
        x = (size + 1) ** u if abs(s - 1) < 1e-9 else (1 + u * ((size + 1) ** (1 - s) - 1)) ** (1 / (1 - s))
        return np.minimum(x.astype(np.int64) - 1, sizes[:, None] - 1)

    def _fill_thresholds(self, progress: bool) -> None:
        n = self.cfg.num_items
        ref = np.arange(1, n + 1)
        if n > REFERENCE_ITEMS:
            ref = np.sort(np.random.default_rng([self.cfg.seed, 3]).choice(ref, REFERENCE_ITEMS, replace=False))
        k = max(1, int(np.ceil(self.cfg.relevant_share * len(ref))))
        block = max(1, (1 << 24) // len(ref))
        for start in tqdm(range(1, self.cfg.num_users + 1, block), desc="relevance thresholds", disable=not progress):
            users = np.arange(start, min(start + block, self.cfg.num_users + 1))
            util = self.truth.utility_matrix(users, ref)
            # the margin absorbs summation-order rounding between utility_matrix and utility
            self.truth.thresholds[users] = np.partition(util, len(ref) - k, axis=1)[:, len(ref) - k] - THRESHOLD_MARGIN

    # ------------------------------------------------------------------ item features

    def modalities(self) -> dict[str, Modality]:
        cfg = self.cfg
        return {"text": Modality(ModalitySpec("dense", cfg.text_dim, "float32"), lambda a, b: self._rows("text", a, b)),
                "image": Modality(ModalitySpec("dense", cfg.image_dim, "float32"), lambda a, b: self._rows("image", a, b)),
                "attr": Modality(ModalitySpec("bag", cfg.attributes_per_item, "int32", cfg.num_attributes + 1),
                                 lambda a, b: self._rows("attr", a, b))}

    def _rows(self, name: str, start: int, stop: int) -> np.ndarray:
        parts = [self._block(name, b)[max(start - b * GEN_BLOCK, 0):stop - b * GEN_BLOCK]
                 for b in range(start // GEN_BLOCK, (stop - 1) // GEN_BLOCK + 1)]
        return np.concatenate(parts)

    def _make_block(self, name: str, block: int) -> np.ndarray:
        cfg = self.cfg
        ids = np.arange(block * GEN_BLOCK, min((block + 1) * GEN_BLOCK, cfg.num_items + 1))
        rng = np.random.default_rng([cfg.seed, 4, ("text", "image", "attr").index(name), block])
        if name == "attr":
            cl = self.item_cluster[ids].astype(np.int64)
            # distinct brand-like ids from a pool of BRANDS_PER_CLUSTER consecutive ids per cluster
            slot = (rng.integers(BRANDS_PER_CLUSTER, size=(len(ids), 1)) + np.arange(cfg.attributes_per_item - 1))
            brands = cfg.num_clusters + cl[:, None] * BRANDS_PER_CLUSTER + slot % BRANDS_PER_CLUSTER
            out = np.concatenate([cl[:, None], brands], axis=1) % cfg.num_attributes + 1
        else:
            proj = self.projections[name]
            out = self.truth.item_factors[ids] @ proj + cfg.feature_noise * rng.standard_normal((len(ids), proj.shape[1]))
        out[ids == 0] = 0
        return out.astype(np.int32 if name == "attr" else np.float32)
