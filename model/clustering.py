"""Clustering of the epoch's embeddings into pseudo-labels (DECAR / DeepCluster).

preprocess_features: PCA-whitening + L2 norm; run_kmeans / run_pic: the two
clusterers of METHODS.md; nmi and cluster_stats: what is logged per epoch.
Pure numpy/faiss: no I/O, no orchestration.
"""
from __future__ import annotations

import math

import faiss
import numpy as np
from scipy import sparse
from sklearn.metrics import normalized_mutual_info_score

from model.config import ClusterConfig

# Relative floor on PCA eigenvalues: whitening divides by sqrt(eigenvalue), so a
# zero-variance direction (rank-deficient or tiny data) would otherwise give inf.
EIGEN_FLOOR = 1e-6
# Above this many points PIC's kNN graph uses an IVF index instead of exact search.
PIC_EXACT_MAX = 50_000
# k-means++ seeds from at most this many points per centre (a random subsample):
# seeding is O(N k d) and the subsample finds the same components (bench/kmeans.py).
KMEANSPP_POINTS_PER_CENTROID = 64


def _as_float32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows to unit length; an all-zero row stays zero instead of becoming NaN."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


def preprocess_features(x: np.ndarray, pca_dim: int = 128) -> np.ndarray:
    """PCA to pca_dim with whitening (eigen power -0.5), then L2-normalise rows.

    Rule for small inputs: the output has min(pca_dim, d, N) columns, so tiny test
    sets work without a special case (directions beyond the data's rank carry no
    variance; EIGEN_FLOOR keeps them finite). Non-finite entries are set to 0 first:
    faiss rejects NaN, and one bad clip must not poison the whole epoch.
    """
    x = _as_float32(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected a non-empty (N, d) array, got shape {x.shape}")
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    n, d = x.shape
    out_dim = min(pca_dim, d, n)
    pca = faiss.PCAMatrix(d, out_dim, 0.0)  # plain PCA first: the eigenvalues set the floor
    pca.train(x)
    eigenvalues = faiss.vector_to_array(pca.eigenvalues)
    pca.eigen_power = -0.5
    pca.epsilon = float(max(eigenvalues.max(initial=0.0), 1e-12) * EIGEN_FLOOR)
    pca.prepare_Ab()
    return l2_normalise(pca.apply(x))


def _split_empty_clusters(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, k: int) -> np.ndarray:
    """Give each empty cluster the farther half of the currently largest cluster.

    Distances to the old centroid order the split; ties (identical points) fall
    back to row order, so degenerate data is split too. With N >= k an empty
    cluster implies a cluster of >= 2 points, so this always terminates.
    """
    labels = labels.copy()
    sizes = np.bincount(labels, minlength=k)
    for empty in np.flatnonzero(sizes == 0):
        largest = int(np.argmax(sizes))
        members = np.flatnonzero(labels == largest)
        dist = ((x[members] - centroids[largest]) ** 2).sum(axis=1)
        order = members[np.argsort(-dist, kind="stable")]
        moved = order[: len(members) // 2]
        labels[moved] = empty
        sizes[largest] -= len(moved)
        sizes[empty] = len(moved)
    return labels


def kmeans_plusplus(x: np.ndarray, k: int, seed: int = 0, trials: int | None = None,
                    sample: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii; scikit-learn's variant): (k, d) centres.

    Why: faiss starts from k random points, so two well-separated components often
    share a centre and k-means never separates them (a 20-component mixture comes
    out merged for most seeds). Each new centre is drawn with probability
    proportional to the squared distance to the nearest chosen one; of `trials`
    draws (default 2 + ln k), the one that lowers the potential most is kept.
    sample: seed from this many random points instead of all (cheaper at 200k).
    Deterministic for a seed (numpy generator; float64 cumulative sums).
    """
    x = _as_float32(x)
    rng = np.random.default_rng(seed)
    if sample is not None and sample < len(x):
        x = x[np.sort(rng.choice(len(x), size=max(sample, k), replace=False))]
    n, d = x.shape
    if k > n:
        raise ValueError(f"k-means++ with k={k} centres needs at least k points, got N={n}")
    trials = trials or 2 + int(math.log(k))
    sq = np.einsum("ij,ij->i", x, x)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    closest = np.maximum(sq - 2 * (x @ x[chosen[0]]) + sq[chosen[0]], 0)
    for c in range(1, k):
        cumulative = np.cumsum(closest, dtype=np.float64)
        candidates = np.minimum(np.searchsorted(cumulative, rng.random(trials) * cumulative[-1]), n - 1)
        dist = np.maximum(sq[:, None] - 2 * (x @ x[candidates].T) + sq[candidates], 0)
        np.minimum(dist, closest[:, None], out=dist)
        best = int(np.argmin(dist.sum(axis=0, dtype=np.float64)))
        closest = np.ascontiguousarray(dist[:, best])
        chosen[c] = candidates[best]
    return x[chosen].copy()


def _redo_seed(seed: int, attempt: int) -> int:
    """Attempt 0 keeps the epoch's seed; later attempts get independent streams (not seed + 1,
    which is the next epoch's seed)."""
    if attempt == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), attempt]).generate_state(1)[0] & 0x7FFFFFFF)  # faiss: C int


def run_kmeans(x: np.ndarray, k: int, iterations: int = 20, seed: int = 0, init: str = "random",
               redo: int = 1, seeding_points: int | None = KMEANSPP_POINTS_PER_CENTROID) -> np.ndarray:
    """faiss k-means on ALL points (no subsampling); exactly k non-empty clusters out.

    init: "random" (faiss: k random points) or "kmeans++" (kmeans_plusplus, seeded from
    at most seeding_points * k points; None = all). redo: run this many times with
    independent seeds, keep the lowest k-means objective (faiss's nredo rule; the loop is
    here because faiss's nredo would restart every attempt from the same given centroids).
    """
    x = _as_float32(x)
    n, d = x.shape
    if k > n:
        raise ValueError(f"k-means with k={k} clusters needs at least k points, got N={n}")
    if init not in ("random", "kmeans++"):
        raise ValueError(f"unknown k-means init {init!r}: expected 'random' or 'kmeans++'")
    if redo < 1:
        raise ValueError(f"k-means redo must be >= 1, got {redo}")
    best_obj, best_centroids = math.inf, None
    for attempt in range(redo):
        attempt_seed = _redo_seed(seed, attempt)
        kmeans = faiss.Kmeans(
            d, k, niter=iterations, seed=attempt_seed, verbose=False,
            max_points_per_centroid=math.ceil(n / k) + 1,  # faiss would subsample to 256 per centroid
            min_points_per_centroid=1,  # silence the "please provide at least 39k points" warning
        )
        start = None
        if init == "kmeans++":
            sample = None if seeding_points is None else seeding_points * k
            start = kmeans_plusplus(x, k, attempt_seed, sample=sample)
        obj = kmeans.train(x, init_centroids=start)
        if best_centroids is None or obj < best_obj:
            best_obj, best_centroids = obj, kmeans.centroids
    index = faiss.IndexFlatL2(d)
    index.add(best_centroids)
    _, assignment = index.search(x, 1)
    labels = assignment[:, 0].astype(np.int64)
    return _split_empty_clusters(x, labels, best_centroids, k)


def knn_graph(x: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, squared L2 distances), each (N, neighbours), self excluded; -1 = not found."""
    n, d = x.shape
    if n <= PIC_EXACT_MAX:
        index = faiss.IndexFlatL2(d)
    else:  # exact search is O(N^2): IVF with ~sqrt(N) lists keeps 200k points in seconds
        nlist = int(math.sqrt(n))
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist)
        index.cp.min_points_per_centroid = 1
        index.train(x)
        index.nprobe = 16
    index.add(x)
    dist, idx = index.search(x, neighbours + 1)
    # Drop self explicitly: with duplicate points, self need not be the first hit.
    is_self = idx == np.arange(n)[:, None]
    no_self = ~is_self.any(axis=1)
    is_self[no_self, -1] = True
    keep = ~is_self
    return idx[keep].reshape(n, neighbours), dist[keep].reshape(n, neighbours)


def _adjacency(idx: np.ndarray, dist: np.ndarray, sigma: float) -> sparse.csr_matrix:
    """W = A + A^T with A_ij = exp(-d_ij / sigma^2) for j among i's neighbours."""
    n = idx.shape[0]
    rows = np.repeat(np.arange(n), idx.shape[1])
    cols, d = idx.ravel(), dist.ravel()
    found = cols >= 0
    a = sparse.csr_matrix((np.exp(-d[found] / sigma**2), (rows[found], cols[found])), shape=(n, n))
    w = (a + a.T).tocsr()
    w.sort_indices()
    return w


def _power_iteration(w: sparse.csr_matrix, alpha: float, iterations: int) -> np.ndarray:
    n = w.shape[0]
    v = np.full(n, 1.0 / n)
    wt = w.T.tocsr()
    for _ in range(iterations):
        v = alpha * (wt @ v) + (1 - alpha) / n
        v /= v.sum()  # L1
    return v


def _local_maxima_clusters(w: sparse.csr_matrix, v: np.ndarray) -> np.ndarray:
    """Each node points to the neighbour j maximising W_ij (v_j - v_i) if positive, else to
    itself; following pointers ends at a local maximum of v, one cluster per maximum."""
    n = w.shape[0]
    rows = np.repeat(np.arange(n), np.diff(w.indptr))
    score = w.data * (v[w.indices] - v[rows])
    pointers = np.arange(n)
    best = np.full(n, 0.0)
    np.maximum.at(best, rows, score)
    winners = np.flatnonzero((score > 0) & (score == best[rows]))
    # first winning edge per row, as in DeepCluster's strict '>' scan
    first_rows, first_at = np.unique(rows[winners], return_index=True)
    pointers[first_rows] = w.indices[winners[first_at]]
    # pointer jumping: v strictly increases along pointers, so there are no cycles
    while True:
        jumped = pointers[pointers]
        if np.array_equal(jumped, pointers):
            break
        pointers = jumped
    return np.unique(pointers, return_inverse=True)[1]


def _reassign_singletons(labels: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """A singleton joins the cluster of its nearest neighbour that is not a singleton."""
    sizes = np.bincount(labels)
    singles = np.flatnonzero(sizes[labels] == 1)
    if len(singles) == 0:
        return labels
    nb = idx[singles]
    ok = nb >= 0
    ok[ok] = sizes[labels[nb[ok]]] > 1
    has = ok.any(axis=1)
    nearest = nb[np.arange(len(singles)), ok.argmax(axis=1)]
    labels = labels.copy()
    labels[singles[has]] = labels[nearest[has]]
    return labels


def run_pic(x: np.ndarray, neighbours: int = 5, sigma: float = 0.2, alpha: float = 0.001,
            iterations: int = 200) -> np.ndarray:
    """Power Iteration Clustering as in DeepCluster; the cluster count is emergent."""
    x = _as_float32(x)
    n = x.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    neighbours = min(neighbours, n - 1)
    idx, dist = knn_graph(x, neighbours)
    w = _adjacency(idx, dist, sigma)
    v = _power_iteration(w, alpha, iterations)
    labels = _reassign_singletons(_local_maxima_clusters(w, v), idx)
    return np.unique(labels, return_inverse=True)[1].astype(np.int64)


def cluster(x: np.ndarray, config: ClusterConfig, seed: int) -> np.ndarray:
    """Embeddings (N, d) -> pseudo-labels (N,) in 0..C-1."""
    features = preprocess_features(x, config.pca_dim)
    if config.algorithm == "kmeans":
        return run_kmeans(features, config.clusters, config.kmeans_iterations, seed,
                          init=config.kmeans_init, redo=config.kmeans_redo)
    if config.algorithm == "pic":
        return run_pic(features, config.pic_neighbours, config.pic_sigma, config.pic_alpha,
                       config.pic_iterations)
    raise ValueError(f"unknown clustering algorithm {config.algorithm!r}")


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """I(A;B) / sqrt(H(A) H(B))."""
    return float(normalized_mutual_info_score(a, b, average_method="geometric"))


def cluster_stats(labels: np.ndarray) -> dict:
    """JSON-ready summary of cluster sizes (empty clusters not counted)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return {"points": 0, "clusters": 0, "largest_fraction": 0.0, "smallest": 0, "singletons": 0,
                "size_quantiles": {}}
    sizes = np.unique(labels, return_counts=True)[1]
    quantiles = np.quantile(sizes, [0.0, 0.1, 0.5, 0.9, 1.0])
    return {
        "points": int(labels.size),
        "clusters": int(len(sizes)),
        "largest_fraction": float(sizes.max() / labels.size),
        "smallest": int(sizes.min()),
        "singletons": int((sizes == 1).sum()),
        "size_quantiles": {name: float(q) for name, q in zip(["min", "p10", "median", "p90", "max"], quantiles)},
    }
