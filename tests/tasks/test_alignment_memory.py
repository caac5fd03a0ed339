"""The pipeline keeps a pair's Gram matrices only within a memory budget (tasks.alignment
gram_cache_limit): 33 + 25 layers at N = 4096 kept 3.6 GiB of Grams, and one more sample
(N = 4097) dropped them all."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

import tasks.alignment as alignment
from tasks.alignment import MetricRequest, align_layers, gram_cache_limit, prepare_layers
from tasks.metrics.representation import KEEP_GRAM_MAX_N


def built_representations(monkeypatch) -> list:
    """The Representations the alignment builds from now on (tasks.alignment's metrics.Representation spied)."""
    built = []
    original = alignment.metrics.Representation

    def spy(*args, **kwargs):
        rep = original(*args, **kwargs)
        built.append(rep)
        return rep

    monkeypatch.setattr(alignment.metrics, "Representation", spy)
    return built


def test_the_limit_counts_every_layer_of_both_sides() -> None:
    f32 = [np.zeros((2, 3), np.float32)]
    assert gram_cache_limit(f32 * 26, 4096) == KEEP_GRAM_MAX_N  # the default zoo: 1.6 GiB of Grams
    assert gram_cache_limit(f32 * 58, 4096) == 0  # a LLaMA-7B-shaped side against a 24-block ViT
    assert gram_cache_limit(f32 * 58, 2048) == KEEP_GRAM_MAX_N
    assert gram_cache_limit(f32 * 2, 100, budget=2 * 100 * 100 * 4) == KEEP_GRAM_MAX_N
    assert gram_cache_limit(f32 * 2, 100, budget=2 * 100 * 100 * 4 - 1) == 0
    assert gram_cache_limit([np.zeros((2, 3))] * 2, 100, budget=2 * 100 * 100 * 4) == 0  # float64: 8 bytes


def test_without_cached_grams_the_scores_are_the_same(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 6))
    xs = prepare_layers([base @ rng.standard_normal((6, w)) + 0.3 * rng.standard_normal((300, w)) for w in (16, 24)])
    ys = prepare_layers([base @ rng.standard_normal((6, w)) + 0.3 * rng.standard_normal((300, w)) for w in (8, 12, 20)])
    requests = [MetricRequest("mutual_knn", {"topk": 5}), MetricRequest("cka"), MetricRequest("cknna", {"topk": 5})]
    kept = align_layers(xs, ys, requests, permutations=9, seed=3)
    monkeypatch.setattr(alignment, "GRAM_CACHE_MAX_BYTES", 0)
    built = built_representations(monkeypatch)
    dropped = align_layers(xs, ys, requests, permutations=9, seed=3)
    assert built and not any(rep.keep_gram for rep in built)
    for a, b in zip(kept, dropped):
        exact = a.metric.name != "cka"  # neighbour counts are exact; CKA's two paths differ by rounding
        np.testing.assert_allclose(b.matrix, a.matrix, rtol=0, atol=0 if exact else 1e-6)
        assert b.best_layers == a.best_layers
        assert b.p_value == a.p_value and b.null_mean == pytest.approx(a.null_mean, abs=0 if exact else 1e-6)


def test_a_metric_refusing_layers_keeps_the_pairs_gram_policy(monkeypatch) -> None:
    """SVCCA refuses a layer narrower than cca_dim: the remaining layers were a new Representation
    with the default Gram policy, so over budget one side kept Grams again (and within budget the
    cached Grams were computed a second time)."""
    rng = np.random.default_rng(1)
    xs = prepare_layers([rng.standard_normal((80, w)).astype(np.float32) for w in (4, 16, 12)])
    ys = prepare_layers([rng.standard_normal((80, w)).astype(np.float32) for w in (16, 12)])
    built = built_representations(monkeypatch)
    monkeypatch.setattr(alignment, "GRAM_CACHE_MAX_BYTES", 0)
    requests = [MetricRequest("svcca", {"cca_dim": 8}), MetricRequest("mutual_knn", {"topk": 5})]
    selected = []
    from tasks.metrics.representation import Representation

    original_select = Representation.select_layers

    def select_spy(self, indices):
        sub = original_select(self, indices)
        selected.append((self, sub))
        return sub

    monkeypatch.setattr(Representation, "select_layers", select_spy)
    svcca, knn = align_layers(xs, ys, requests)
    assert 0 in svcca.excluded_a and np.isnan(svcca.matrix[0]).all() and np.isfinite(svcca.matrix[1:]).all()
    # every representation the metrics see (the pair's, and the one without the refused layer) keeps no Gram
    subsets = [sub for _, sub in selected]
    assert subsets and not any(rep.keep_gram for rep in built[:2] + subsets)
    monkeypatch.setattr(alignment, "GRAM_CACHE_MAX_BYTES", 2 << 30)
    built.clear()
    selected.clear()
    align_layers(xs, ys, requests)
    (rep_x, sub), = selected  # the Grams cached for the pair are shared, not computed again
    assert sub.keep_gram and sub.cached_gram(0) is rep_x.cached_gram(1) and sub.cached_gram(1) is rep_x.cached_gram(2)


def test_select_layers_shares_grams_and_scores_like_a_fresh_representation() -> None:
    from tasks import metrics

    rng = np.random.default_rng(2)
    layers = [rng.standard_normal((50, w)).astype(np.float32) for w in (6, 9, 7)]
    rep = metrics.Representation(layers).cache_grams()
    sub = rep.select_layers([2, 0])
    assert sub.widths == [7, 6] and sub.n == 50 and sub.cached_gram(0) is rep.cached_gram(2)
    other = metrics.Representation([layers[1]])
    np.testing.assert_array_equal(metrics.layer_matrix("cka", sub, other), metrics.layer_matrix(
        "cka", metrics.Representation([layers[2], layers[0]]).cache_grams(), other))
    no_grams = metrics.Representation(layers, keep_gram_max_n=0).select_layers([1])
    assert not no_grams.keep_gram and no_grams.cached_gram(0) is None


def _rbf_and_rsa(n: int, layers: tuple[int, int], seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return ([rng.standard_normal((n, 8)).astype(np.float32) for _ in range(layers[0])],
            [rng.standard_normal((n, 6)).astype(np.float32) for _ in range(layers[1])])


def test_quadratic_metrics_beyond_the_memory_are_refused_before_any_runs(monkeypatch) -> None:
    """RBF CKA and RSA keep O(L N^2) at every N: at N=20,000 over 5 + 4 layers a run needed
    ~19 and ~27 GB and the OOM killer ended it without a word. Now the pair is refused up front,
    naming the metrics, N, the layers and the memory."""
    xs, ys = _rbf_and_rsa(300, (2, 1))
    encoded, align_one = [], alignment._align_one
    monkeypatch.setattr(alignment, "_align_one", lambda request, *args: encoded.append(request) or align_one(request, *args))
    monkeypatch.setenv(alignment.MEMORY_ENV, "1")  # 1 MiB: 300^2 x (2 x 3 + 31) bytes of RBF CKA are 3.2 MiB
    requests = [MetricRequest("mutual_knn", {"topk": 5}), MetricRequest("cka_rbf_median"), MetricRequest("rsa_spearman")]
    with pytest.raises(alignment.AlignmentMemoryError, match=r"a x b: cka_rbf_median, rsa_spearman at N=300 over 2 \+ 1 "
                                                             r"layers would need about 0\.0 GiB .*PRH_ALIGN_MEMORY_MB"):
        align_layers(xs, ys, requests, names=("a", "b"))
    assert encoded == []  # not even mutual_knn ran: the pair is refused before its first metric
    monkeypatch.setenv(alignment.MEMORY_ENV, "1")
    align_layers(xs, ys, requests[:1], names=("a", "b"))  # k-NN lists: O(N k L), never refused
    assert [r.name for r in encoded] == ["mutual_knn"]
    monkeypatch.setenv(alignment.MEMORY_ENV, "abc")
    with pytest.raises(ValueError, match="PRH_ALIGN_MEMORY_MB='abc' is not a number of MiB"):
        align_layers(xs, ys, requests, names=("a", "b"))


def test_quadratic_memory_counts_shared_and_built_encodings_once() -> None:
    """cka with kernel_metric='rbf', rbf_sigma='median' shares cka_rbf_median's encoding, and a
    side that holds it already (an earlier pair) adds only the one-time peak."""
    xs, ys = _rbf_and_rsa(100, (3, 2))
    rep_x, rep_y = alignment.metrics.Representation(xs), alignment.metrics.Representation(ys)
    n2 = 100 * 100
    rbf, rsa = alignment.QUADRATIC_MEMORY["rbf"], alignment.QUADRATIC_MEMORY["rsa"]
    shared = [MetricRequest("cka_rbf_median"), MetricRequest("cka", {"kernel_metric": "rbf", "rbf_sigma": "median"})]
    assert alignment.quadratic_memory(shared, rep_x, rep_y)[0] == int(rbf[0] * 5 * n2 + rbf[1] * n2)
    assert alignment.quadratic_memory([MetricRequest("rsa_spearman")], rep_x, rep_y, permutations=9)[0] == int(rsa[0] * 5 * n2 + rsa[2] * n2)
    alignment.metrics.layer_matrix("cka_rbf_median", rep_x, rep_y)
    assert alignment.quadratic_memory(shared, rep_x, rep_y)[0] == int(rbf[1] * n2)
    assert alignment.quadratic_memory([MetricRequest("cka"), MetricRequest("svcca")], rep_x, rep_y) == (0, {})


_PEAK_SCRIPT = """
import sys, numpy as np, scipy.spatial.distance, scipy.stats, torch
torch.set_num_threads(1)
from tasks import metrics
from tasks.alignment import MetricRequest, quadratic_memory
from tasks.malloc_policy import pin_mmap_threshold
assert pin_mmap_threshold()  # as the pipeline's pairs do (alignment.quadratic_memory_reserved)
name, n = sys.argv[1], int(sys.argv[2])
y_layers, permutations = (int(v) for v in sys.argv[3:5]) if len(sys.argv) > 3 else (2, 0)
rng = np.random.default_rng(0)
xs = [rng.standard_normal((n, 8)).astype(np.float32) for _ in range(2)]
ys = [rng.standard_normal((n, 6)).astype(np.float32) for _ in range(y_layers)]
rx, ry = metrics.Representation(xs, keep_gram_max_n=0), metrics.Representation(ys, keep_gram_max_n=0)
metrics.calibrate(name, [x[:50] for x in xs], [y[:50] for y in ys], permutations=2)  # warm up: lazy imports, allocator
def kb(field):
    return int(open("/proc/self/status").read().split(field + ":")[1].split()[0]) * 1024
# before: a built encoding is not counted again
estimated = [quadratic_memory([MetricRequest(name)], rx, ry, permutations=p)[0] for p in (0, permutations)]
before = kb("VmRSS")
metrics.layer_matrix(name, rx, ry)
encoded = kb("VmHWM") - before
if permutations:
    metrics.calibrate(name, rx, ry, permutations=permutations)
print(encoded, estimated[0], kb("VmHWM") - before, estimated[1])
"""

#: Permutations of the null peak tests. The null's peak is one block's temporaries and its copies
#: of the permuted side, whatever the count (RBF CKA, 2 + 10 layers at N = 3,000: 527.7 MiB with
#: 2 permutations, 526.7 with 20); the defects the tests guard (RSA's copy of every y-layer's
#: ranks per permutation, RBF's cached index tables) are there from the first one. 20 had made
#: RSA's test take 37.5 s on the 2-core CI machine.
NULL_PEAK_PERMUTATIONS = 2


class Peak(NamedTuple):
    """A ``_PEAK_SCRIPT`` run, in bytes above the prepared features: the peak RSS of the encodings
    (``layer_matrix``) and its ``quadratic_memory`` estimate; the peak after the null's permutations
    too, and the estimate with them."""

    encoded: int
    estimated: int
    total: int
    estimated_null: int


def _peak(name: str, n: int, y_layers: int = 2, permutations: int = 0, hash_seed: str | None = None) -> Peak:
    """``_PEAK_SCRIPT`` in a fresh process: ``name`` on 2 + ``y_layers`` random layers of ``n`` rows."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = hash_seed
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, name, str(n), str(y_layers), str(permutations)],
                         capture_output=True, text=True, timeout=180, env=env, check=True).stdout.split()
    return Peak(*(int(v) for v in out[-4:]))


#: Hash seeds of the RBF CKA runs below: with the fixed mmap threshold, 330 and 331 MiB at
#: N = 3,000 (2 + 2 layers). Without it a run peaked at 396, 412 or 429 MiB, which of them moving
#: with the seed, the script's text and from one run to the next (these two: 397 and 429, then
#: 396 and 413), so the seeds alone may miss it; its peak above the estimate does not.
RBF_HASH_SEEDS = ("1", "2")


@pytest.fixture(scope="module")
def rbf_peaks() -> list[Peak]:
    """RBF CKA of 2 + 2 layers at N = 3,000 and its null, one fresh process per hash seed of
    ``RBF_HASH_SEEDS``: shared by the three tests that read it (each had run its own processes)."""
    return [_peak("cka_rbf_median", 3000, 2, NULL_PEAK_PERMUTATIONS, hash_seed=seed) for seed in RBF_HASH_SEEDS]


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads peak RSS from /proc")
@pytest.mark.parametrize("name", ["cka_rbf_median", "rsa_spearman"])
def test_the_estimate_is_close_to_the_measured_peak(name: str, request) -> None:
    """QUADRATIC_MEMORY against the real peak RSS of the metric, in a fresh process (2 + 2 layers,
    N = 3,000) with glibc's mmap threshold fixed as the pipeline fixes it (``malloc_policy``):
    within [0.7, 1.3] of it (an estimate below the peak lets an OOM through, one far above it
    refuses runs that fit). Without the fixed threshold the peak moved with the hash seed: 1.18
    to 1.34 times the estimate here (CI failed at 1.34), 0.97 to 1.54 at N = 4,000."""
    runs = request.getfixturevalue("rbf_peaks") if name == "cka_rbf_median" else [_peak(name, 3000)]
    for run in runs:
        assert 0.7 * run.estimated <= run.encoded <= 1.3 * run.estimated, run


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads peak RSS from /proc")
@pytest.mark.parametrize(("name", "y_layers"), [("cka_rbf_median", 10), ("cka_rbf_median", 6), ("rsa_spearman", 10)])
def test_the_estimate_holds_the_null_of_many_permuted_layers(name: str, y_layers: int) -> None:
    """With permutations the estimate holds the null's peak, which grows with the permuted side's
    layers (``QUADRATIC_NULL_MEMORY``: RBF's position-major copy of them) or must not (RSA: its
    null gathers the permuted ranks a block at a time). 2 + 10 layers, N = 3,000, 20
    permutations: RBF had peaked 527 MiB against an estimate of 472, RSA (a copy of every y-layer's
    ranks per permutation) 867 MiB against 738. 2 + 6 layers: RBF peaked 415 to 430 MiB against
    the 412 of a null base of 20 per N^2. Here ``NULL_PEAK_PERMUTATIONS`` of them: the same peaks."""
    run = _peak(name, 3000, y_layers, NULL_PEAK_PERMUTATIONS)
    assert 0.7 * run.estimated_null <= run.total <= run.estimated_null, run


def test_a_containers_reclaimable_file_cache_counts_as_available(tmp_path, monkeypatch) -> None:
    """The review: cgroup v2's memory.current counts the page cache of the weights and Parquet
    files a run has read; limit minus current made a container look full and refused every
    RBF CKA / RSA pair. Its inactive file cache is reclaimable: limit - (current - inactive_file)."""
    from tasks.memory_available import available_memory

    monkeypatch.delenv("PRH_ALIGN_MEMORY_MB", raising=False)
    gib = 2**30
    (tmp_path / "memory.max").write_text(f"{2 * gib}\n")
    (tmp_path / "memory.current").write_text(f"{2 * gib - 4096}\n")  # nearly "full" ...
    (tmp_path / "memory.stat").write_text(f"anon {gib // 4}\nfile {gib}\ninactive_file {gib}\nactive_file 0\n")  # ... of cache
    assert available_memory(tmp_path) == gib + 4096
    (tmp_path / "memory.max").write_text("max\n")  # no limit: MemAvailable alone (a machine with more than 4 KiB free)
    assert available_memory(tmp_path) > 4096
    monkeypatch.setenv("PRH_ALIGN_MEMORY_MB", "1.5")
    assert available_memory(tmp_path) == int(1.5 * 2**20)


def test_pairs_aligning_at_once_wait_for_each_others_quadratic_memory(monkeypatch) -> None:
    """The review: with a threads runner each pair was checked alone against the same free memory,
    so two pairs needing 60% of it each both ran. A pair that fits alone but not beside another's
    reservation now waits for it to end (and is not refused)."""
    import threading

    xs, ys = _rbf_and_rsa(300, (2, 1))
    requests = [MetricRequest("cka_rbf_median")]
    rep = lambda: (alignment.metrics.Representation(xs), alignment.metrics.Representation(ys))  # noqa: E731
    need = alignment.quadratic_memory(requests, *rep())[0]
    monkeypatch.setenv(alignment.MEMORY_ENV, str(1.5 * need / 2**20))  # one pair fits, two do not
    inside, release, order = threading.Event(), threading.Event(), []

    def first() -> None:
        with alignment.quadratic_memory_reserved(requests, *rep(), names=("a", "b")):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        with alignment.quadratic_memory_reserved(requests, *rep(), names=("c", "d")):
            order.append("second in")

    one = threading.Thread(target=first)
    one.start()
    assert inside.wait(10)
    two = threading.Thread(target=second)
    two.start()
    two.join(0.5)
    assert two.is_alive() and order == ["first in"]  # waiting, not refused
    release.set()
    one.join(10), two.join(10)
    assert order == ["first in", "first out", "second in"] and alignment._reserved_bytes == 0


#: A child process under an address-space limit (``ulimit -v``) of what it maps now plus half of
#: what an RSA pair at N=3,000 needs: the pair's alignment, refused or failed.
UNDER_ULIMIT_V = """
import resource, sys
import numpy as np
from tasks.alignment import AlignmentMemoryError, MetricRequest, PreparedModel, align_layers, quadratic_memory
rng = np.random.default_rng(0)
xs = [rng.normal(size=(3000, 16)).astype(np.float32) for _ in range(3)]
ys = [rng.normal(size=(3000, 16)).astype(np.float32) for _ in range(2)]
request = MetricRequest("rsa_spearman")
align_layers([x[:50] for x in xs], [y[:50] for y in ys], [request])  # every lazy import done before the limit
need, _ = quadratic_memory([request], PreparedModel(xs).representation(0), PreparedModel(ys).representation(0))
mapped = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
limit = mapped + need // 2
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    align_layers(xs, ys, [request], names=("a", "b"))
except (AlignmentMemoryError, MemoryError, RuntimeError) as error:  # refused; numpy's or torch's allocation failed
    print(type(error).__name__, error, sep=": ")
"""


def test_a_process_memory_limit_refuses_the_pair_before_it_runs() -> None:
    """Under `ulimit -v` (a batch scheduler's address-space limit, `prlimit --as`) the system's
    MemAvailable still showed gigabytes: an RSA pair that could not fit ran and failed part way
    with a bare numpy `MemoryError: Unable to allocate 137. MiB for an array ...` (or torch's
    `DefaultCPUAllocator: can't allocate memory`), naming neither the metric nor what to change. The limit now counts as what is available, so the pair is
    refused up front like one beyond the machine's memory."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("PRH_ALIGN_MEMORY_MB", None)
    done = subprocess.run([sys.executable, "-c", UNDER_ULIMIT_V], capture_output=True, text=True, timeout=300, cwd=root,
                          env=env, check=True)
    assert done.stdout.startswith("AlignmentMemoryError: a x b: rsa_spearman at N=3,000 over 3 + 2 layers would need about "), \
        done.stdout + done.stderr


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_pair_with_quadratic_metrics_fixes_the_mmap_threshold_and_the_peak_no_longer_moves(rbf_peaks) -> None:
    """The pipeline's pairs (``quadratic_memory_reserved``) fix glibc's mmap threshold before their
    ``O(L N^2)`` work; then the peak of RBF CKA is one figure, whatever the hash seed (N = 3,000:
    330 MiB for an estimate of 335; with the dynamic threshold 396 to 429 MiB, ``RBF_HASH_SEEDS``;
    at N = 4,000 608 MB for an estimate of 624, with the dynamic threshold 608 to 962 MB; the
    seeds 1 and 3 used there later drew the same 704 MiB from it: no longer a test of it)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    script = ("import tasks.malloc_policy as mp\n"
              "from tasks.alignment import MetricRequest, quadratic_memory_reserved\n"
              "from tasks import metrics\n"
              "import numpy as np\n"
              "x = metrics.Representation([np.arange(60, dtype=np.float32).reshape(20, 3) ** 2])\n"
              "before = mp._pinned\n"
              "with quadratic_memory_reserved([MetricRequest('cka_rbf_median')], x, x):\n"
              "    print(before, mp._pinned)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(root)}, check=True).stdout.split()
    assert out == ["None", "True"]
    peaks = [run.encoded for run in rbf_peaks]
    assert max(peaks) < 1.03 * min(peaks), peaks
    # and it is the figure the estimate was measured on (0.97 to 0.99 of it at N = 3,000 to 4,000):
    # the dynamic threshold's peaks were at least 1.18 times it, whichever seeds two runs drew
    assert max(peaks) <= 1.1 * rbf_peaks[0].estimated, (peaks, rbf_peaks[0].estimated)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/status"), reason="reads peak RSS from /proc")
def test_the_null_of_rbf_cka_peaks_below_its_encoding(rbf_peaks) -> None:
    """QUADRATIC_MEMORY counts RBF CKA's permutations as no higher a peak than its encoding
    (``once`` = ``once with permutations``). Permutations of 2 + 2 layers at N = 3,000 after the
    encodings (``rbf_peaks``): the peak stays the encoding's (332 MiB, one thread). The null's
    cached index tables (row-major positions from one ``masked_select`` of the whole table, the
    int64 pair indices kept beside their int32 copies) had taken it to 358 MiB (352 before the
    row-block packed order), above the pair's estimate (334 MiB)."""
    for run in rbf_peaks:
        assert run.total <= run.encoded, run


def test_a_custom_engine_declares_its_quadratic_memory_by_a_known_kind() -> None:
    """``Engine.quadratic_memory``: an engine answering ``'rsa'`` is counted as RSA's encodings
    are; an unknown answer is refused naming the engine (it had been a bare KeyError)."""
    from tasks.metrics.engine import Engine

    class Dense(Engine):
        def __init__(self, kind):
            self.kind = kind

        def quadratic_memory(self, params):
            return self.kind

    assert alignment._quadratic_kind(Dense("rsa"), {}) == "rsa"
    assert alignment._quadratic_kind(Dense(None), {}) is None
    assert alignment._quadratic_kind(object(), {}) is None  # an engine object without the method
    with pytest.raises(ValueError, match=r"Dense.quadratic_memory returned 'big': expected one of 'rbf', 'rsa' or None"):
        alignment._quadratic_kind(Dense("big"), {})
