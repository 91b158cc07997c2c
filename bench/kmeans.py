"""faiss k-means vs scikit-learn (KMeans, MiniBatchKMeans) at DECAR's scale, PIC, and k-means init.

Data: a Gaussian mixture (default 200k x 128 float32, 512 centres), clustered
with k = 512 and the same 20 iterations everywhere (sklearn: n_init=1,
max_iter=20, tol=0, random init like faiss). Prints wall times, the time
ratio, and NMI between the labelings (and with the mixture's truth).

Init section (printed first): random init (faiss), k-means++ seeding and
best-of-3 (redo) on two well-separated Gaussian mixtures, 3,000 x 32 with 20
components and N x 128 with k components, preprocessed as the pipeline does
(PCA-whitening + L2); NMI to the truth and seconds per option, several seeds.

    .venv/bin/python bench/kmeans.py            # full size, ~2-3 min on 2 cores
    .venv/bin/python bench/kmeans.py --n 20000  # quick
    .venv/bin/python bench/kmeans.py --only-init --threads 1  # init table only, ~4 min
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from sklearn.cluster import KMeans, MiniBatchKMeans  # noqa: E402

from model.clustering import cluster_stats, l2_normalise, nmi, preprocess_features, run_kmeans, run_pic  # noqa: E402
from model.runtime import set_threads  # noqa: E402

INIT_OPTIONS = {"random": {"init": "random"}, "kmeans++": {"init": "kmeans++"},
                "random, redo 3": {"init": "random", "redo": 3}, "kmeans++, redo 3": {"init": "kmeans++", "redo": 3}}


def mixture(n: int, dim: int, centres: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, centres, n)
    means = rng.normal(size=(centres, dim)).astype(np.float32) * 0.5  # overlapping: k-means runs all iterations
    return means[truth] + rng.normal(size=(n, dim)).astype(np.float32), truth


def separated_mixture(n: int, dim: int, centres: int, spread: float, seed: int = 0):
    """Unit-variance components around means drawn with std `spread`: recoverable, so NMI to
    the truth measures whether k-means found every component (1.0) or merged some."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, centres, n)
    means = rng.normal(size=(centres, dim)).astype(np.float32) * spread
    return means[truth] + rng.normal(size=(n, dim)).astype(np.float32), truth


def compare_inits(n: int, dim: int, k: int, spread: float, seeds: int, iterations: int) -> None:
    x, truth = separated_mixture(n, dim, k, spread)
    features = preprocess_features(x, 128)
    print(f"\n{n} x {dim}, {k} components (mean std {spread}), k={k}, seeds 0..{seeds - 1}")
    print(f"  {'option':<18} {'NMI mean':>8} {'min':>6} {'max':>6} {'s/run':>7}   NMI per seed")
    for name, options in INIT_OPTIONS.items():
        scores, seconds = [], []
        for seed in range(seeds):
            labels, s = timed(run_kmeans, features, k, iterations, seed=seed, **options)
            scores.append(nmi(labels, truth))
            seconds.append(s)
        print(f"  {name:<18} {np.mean(scores):8.4f} {min(scores):6.4f} {max(scores):6.4f} {np.mean(seconds):7.2f}   "
              + " ".join(f"{v:.3f}" for v in scores))


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def compare_kmeans(x: np.ndarray, k: int, iterations: int) -> dict:
    """faiss k-means and sklearn KMeans with the same k, random init and iteration count."""
    faiss_labels, faiss_s = timed(run_kmeans, x, k, iterations, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that tol=0 never converges early
        sk = KMeans(k, init="random", n_init=1, max_iter=iterations, tol=0.0, random_state=0)
        sk_labels, sk_s = timed(sk.fit_predict, x)
    return {"faiss": faiss_labels, "faiss_s": faiss_s, "sklearn": sk_labels, "sklearn_s": sk_s,
            "sklearn_iterations": sk.n_iter_}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="points for k-means")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--pic-n", type=int, default=50_000, help="points for PIC (0 = skip)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--init-seeds", type=int, default=3, help="seeds per option in the init table (0 = skip)")
    parser.add_argument("--only-init", action="store_true", help="print the init table only")
    args = parser.parse_args()
    set_threads(args.threads)
    if args.init_seeds:
        print(f"k-means init: random vs k-means++ vs best of 3, {args.iterations} iterations, {args.threads} threads")
        compare_inits(3000, 32, 20, 10.0, max(args.init_seeds, 5), args.iterations)
        compare_inits(args.n, args.dim, args.k, 2.0, args.init_seeds, args.iterations)
    if args.only_init:
        return
    x, truth = mixture(args.n, args.dim, args.k)
    print(f"data: {args.n} x {args.dim} float32, {args.k}-centre mixture; k={args.k}, "
          f"{args.iterations} iterations, {args.threads} threads")

    r = compare_kmeans(x, args.k, args.iterations)
    print(f"faiss k-means        {r['faiss_s']:8.1f} s   NMI vs truth {nmi(r['faiss'], truth):.4f}   "
          f"clusters {cluster_stats(r['faiss'])['clusters']}")
    print(f"sklearn KMeans       {r['sklearn_s']:8.1f} s   NMI vs truth {nmi(r['sklearn'], truth):.4f}   "
          f"iterations run {r['sklearn_iterations']}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mb = MiniBatchKMeans(args.k, init="random", n_init=1, max_iter=args.iterations, batch_size=4096,
                             random_state=0)
        mb_labels, mb_s = timed(mb.fit_predict, x)
    print(f"sklearn MiniBatch    {mb_s:8.1f} s   NMI vs truth {nmi(mb_labels, truth):.4f}   "
          f"passes {mb.n_iter_} (stops early when the loss stalls)")
    print(f"time ratio sklearn KMeans / faiss: {r['sklearn_s'] / r['faiss_s']:.1f}x   "
          f"MiniBatch / faiss: {mb_s / r['faiss_s']:.1f}x")
    print(f"NMI faiss vs sklearn KMeans: {nmi(r['faiss'], r['sklearn']):.4f}   "
          f"faiss vs MiniBatch: {nmi(r['faiss'], mb_labels):.4f}")

    if args.pic_n:
        points = l2_normalise(x[: args.pic_n])
        pic_labels, pic_s = timed(run_pic, points)
        stats = cluster_stats(pic_labels)
        print(f"PIC on {len(points)} points: {pic_s:.1f} s, {stats['clusters']} clusters, "
              f"largest {stats['largest_fraction']:.4f}, NMI vs truth {nmi(pic_labels, truth[: args.pic_n]):.4f}")


if __name__ == "__main__":
    main()
