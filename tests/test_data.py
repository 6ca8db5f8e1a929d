"""Dataset sources, splits and bad-input handling."""
import numpy as np
import pytest

from lbcnn.data import load_dataset
from lbcnn.data.splits import allocate, stratified_subset, train_val_split
from lbcnn.errors import ConfigError, DataError


def test_registry_reads_shared_data(data_dir):
    ds = load_dataset("mnist")
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.n_classes == 10
    g = load_dataset("gtsrb")
    assert g.input_shape == (32, 32, 3) and g.n_classes == 43  # colour kept
    assert g.groups_train is not None and np.bincount(g.groups_train).max() == 30


def test_olivetti_paper_split(data_dir):
    ds = load_dataset("olivetti", split="paper")
    assert len(ds.y_train) == 250 and len(ds.y_test) == 150
    raw = np.load(data_dir / "olivetti_faces.npz")
    perm = np.random.RandomState(0).permutation(400)
    np.testing.assert_array_equal(ds.y_test, raw["y"][perm[250:]])
    assert ds.input_scale == pytest.approx(1 / raw["x"].max())
    strat = load_dataset("olivetti", seed=3)
    assert np.all(np.bincount(strat.y_test) == 5)


def test_stratified_subset_keeps_proportions(rng):
    y = np.repeat(np.arange(4), [100, 200, 300, 400])
    idx = stratified_subset(y, 100, rng)
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    np.testing.assert_array_equal(np.bincount(y[idx]), [10, 20, 30, 40])
    assert allocate(np.array([1, 1, 1]), 2).sum() == 2


def test_val_and_train_never_overlap_and_are_seeded():
    y = np.repeat(np.arange(10), 100)
    tr, va = train_val_split(y, 500, 0.2, seed=1)
    assert len(np.intersect1d(tr, va)) == 0
    assert len(tr) + len(va) == 500 and len(va) == 100
    tr2, va2 = train_val_split(y, 500, 0.2, seed=1)
    np.testing.assert_array_equal(tr, tr2)
    np.testing.assert_array_equal(va, va2)


def test_gtsrb_validation_holds_out_whole_tracks(data_dir):
    ds = load_dataset("gtsrb")
    tr, va = ds.split(10000, 0.1, seed=0)
    assert len(np.intersect1d(tr, va)) == 0
    val_tracks = set(ds.groups_train[va].tolist())
    assert not val_tracks & set(ds.groups_train[tr].tolist())
    for g in val_tracks:  # every image of a held-out track is in validation
        assert np.all(np.isin(np.flatnonzero(ds.groups_train == g), va))


def test_npz_source_forms_and_errors(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (40, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(4), 10)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    ds = load_dataset(f"npz:{tmp_path / 'a.npz'}")
    assert len(ds.y_train) + len(ds.y_test) == 40
    np.savez(tmp_path / "b.npz", x=x, y=y[:-1])
    with pytest.raises(DataError, match="40 images but 39 labels"):
        load_dataset(f"npz:{tmp_path / 'b.npz'}")
    (tmp_path / "c.npz").write_bytes((tmp_path / "a.npz").read_bytes()[:100])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_dataset(f"npz:{tmp_path / 'c.npz'}")
    np.savez(tmp_path / "d.npz", x=np.full((4, 8, 8), np.nan), y=np.arange(4))
    with pytest.raises(DataError, match="NaN"):
        load_dataset(f"npz:{tmp_path / 'd.npz'}")
    np.savez(tmp_path / "e.npz", images=x)
    with pytest.raises(DataError, match="expected arrays"):
        load_dataset(f"npz:{tmp_path / 'e.npz'}")


def test_folder_source(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    for cls, ext in [("cat", "png"), ("dog", "ppm"), ("owl", "jpg")]:
        (tmp_path / cls).mkdir()
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(
                tmp_path / cls / f"{i}.{ext}")
    ds = load_dataset(f"folder:{tmp_path}", resize=(8, 8), grayscale=True)
    assert ds.input_shape == (8, 8, 1) and ds.class_names == ["cat", "dog", "owl"]
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.input_shape == (10, 12, 3)
    (tmp_path / "eel").mkdir()
    with pytest.raises(DataError, match="empty"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "eel" / "0.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="eel holds no image that lbcnn can read.*not an image"):
        load_dataset(f"folder:{tmp_path}")
    # a stray text file among real images is skipped, counted in one note
    (tmp_path / "eel" / "0.png").unlink()
    (tmp_path / "eel").rmdir()
    (tmp_path / "cat" / "readme.txt").write_text("labels by folder")
    ds = load_dataset(f"folder:{tmp_path}")
    assert len(ds.y_train) + len(ds.y_test) == 12
    assert ds.notes and "skipped 1 file" in ds.notes[0]


def test_unknown_dataset_and_bad_data_dir(monkeypatch, tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")
    monkeypatch.setenv("LBCNN_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match="not a folder"):
        load_dataset("mnist")
    monkeypatch.setenv("LBCNN_DATA", str(tmp_path))
    with pytest.raises(DataError, match="has no mnist.npz"):
        load_dataset("mnist")


def test_impossible_split_sizes():
    y = np.repeat(np.arange(3), 10)
    with pytest.raises(ConfigError, match="exceeds"):
        train_val_split(y, 100, 0.1, 0)
    with pytest.raises(ConfigError, match="val_fraction"):
        train_val_split(y, 10, 1.5, 0)


def test_idx_parser_and_safe_unpickler():
    import pickle
    from lbcnn.data.download import parse_idx, safe_unpickle
    raw = bytes([0, 0, 8, 2]) + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + bytes(range(6))
    np.testing.assert_array_equal(parse_idx(raw), np.arange(6).reshape(2, 3))
    with pytest.raises(DataError, match="truncated"):
        parse_idx(raw[:-1])
    ok = pickle.dumps({b"data": [1, 2], b"labels": [0]})
    assert safe_unpickle(ok)[b"labels"] == [0]

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    with pytest.raises(DataError, match="refusing"):
        safe_unpickle(pickle.dumps(Evil()))


def test_random_shift_matches_per_image_loop_oracle():
    from lbcnn.data.augment import random_shift
    from lbcnn.errors import ConfigError, DataError

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(40, 7, 9, 3), dtype=np.uint8)
    got = random_shift(x, 2, np.random.default_rng(11))
    # oracle: replay the same draws, move one image at a time with clamped indexing
    r = np.random.default_rng(11)
    dy, dx = r.integers(-2, 3, 40), r.integers(-2, 3, 40)
    want = np.empty_like(x)
    for k in range(40):
        for i in range(7):
            for j in range(9):
                want[k, i, j] = x[k, min(max(i - dy[k], 0), 6), min(max(j - dx[k], 0), 8)]
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.uint8 and len(set(zip(dy, dx))) > 10
    np.testing.assert_array_equal(random_shift(x, 0, rng), x)
    with pytest.raises(ConfigError, match="smaller than the image"):
        random_shift(x, 7, rng)
    with pytest.raises(DataError, match="NHWC"):
        random_shift(x[0], 1, rng)


def test_kfold_ids_stratified_and_groups_whole():
    from lbcnn.data.splits import kfold_ids
    from lbcnn.errors import ConfigError

    y = np.repeat(np.arange(4), [10, 7, 5, 3])
    f = kfold_ids(y, 5, seed=0)
    assert set(f.tolist()) == set(range(5))
    for c in range(4):  # each class spread as evenly as round-robin allows
        counts = np.bincount(f[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    np.testing.assert_array_equal(f, kfold_ids(y, 5, seed=0))
    assert not np.array_equal(f, kfold_ids(y, 5, seed=1))
    groups = np.array([f"{c}-{i // 2}" for i, c in enumerate(y)])  # pairs, within a class
    fg = kfold_ids(y, 3, seed=0, groups=groups)
    for g in np.unique(groups):
        assert len(set(fg[groups == g].tolist())) == 1
    with pytest.raises(ConfigError, match="at least 2 folds"):
        kfold_ids(y, 1, 0)


class _FixedDraws:
    """Stands in for a Generator: returns the given arrays in the order random_affine draws."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def uniform(self, low, high, size):
        return self.draws.pop(0)


def test_random_affine_integer_shift_and_quarter_turn_are_exact():
    from lbcnn.data.augment import random_affine

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 9, 7, 2), dtype=np.uint8)
    np.testing.assert_array_equal(random_affine(x, 0, 0, 0, rng), x)
    dy = rng.integers(-2, 3, 30).astype(float)
    dx = rng.integers(-2, 3, 30).astype(float)
    got = random_affine(x, 2, 5, 0.1, _FixedDraws(np.zeros(30), np.ones(30), np.stack([dy, dx])))
    want = np.empty_like(x)
    for k in range(30):
        for i in range(9):
            for j in range(7):
                want[k, i, j] = x[k, min(max(i - int(dy[k]), 0), 8), min(max(j - int(dx[k]), 0), 6)]
    np.testing.assert_array_equal(got, want)
    sq = rng.integers(0, 256, (1, 6, 6, 1), dtype=np.uint8)
    turned = random_affine(sq, 0, 90, 0, _FixedDraws(np.array([90.0]), np.ones(1), np.zeros((2, 1))))
    assert turned.dtype == np.uint8
    np.testing.assert_array_equal(turned[0, :, :, 0], np.rot90(sq[0, :, :, 0], -1))
    # a 2x zoom-out keeps the centre pixel of an odd-sized image in place
    odd = rng.integers(0, 256, (1, 5, 5, 1), dtype=np.uint8)
    far = random_affine(odd, 0, 0, 0.5, _FixedDraws(np.zeros(1), np.array([0.5]), np.zeros((2, 1))))
    assert far[0, 2, 2, 0] == odd[0, 2, 2, 0]


def test_warp_batch_identity_and_integer_translation_match_oracle():
    """A zero draw is the identity; a whole-pixel translation equals a slice of an
    edge-padded copy (the obvious oracle), so the bilinear warp is exact there."""
    import torch
    from lbcnn.data.augment import affine_params, warp_batch
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 2, 9, 11)).astype(np.float32))
    ident = affine_params(3, 9, 11, 0.0, 0.0, 0.0, np.random.default_rng(1))
    torch.testing.assert_close(warp_batch(x, ident), x, atol=1e-5, rtol=0)  # float32 grid rounding
    dy, dx = 2, -1  # output pixel (i, j) shows input pixel (i - dy, j - dx)
    theta = ident.copy()
    theta[:, 0, 2], theta[:, 1, 2] = -2 * dx / 11, -2 * dy / 9
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
    want = padded[:, :, 2 - dy:2 - dy + 9, 2 - dx:2 - dx + 11]
    np.testing.assert_allclose(warp_batch(x, theta).numpy(), want, atol=1e-5)
    with pytest.raises(ConfigError):
        affine_params(3, 9, 11, -1.0, 0.0, 0.0, np.random.default_rng(1))


def test_elastic_offsets_are_smoothed_scaled_noise_and_warp_like_a_translation():
    """The field is linear in alpha, smooth (neighbours agree far more than white
    noise would), zero for alpha 0; a constant field moves the image like a
    whole-pixel translation (edge-padded slice oracle)."""
    import torch
    from lbcnn.data.augment import affine_params, elastic_offsets, random_affine, warp_batch

    a = elastic_offsets(50, 28, 28, 10.0, 4.0, np.random.default_rng(3))
    b = elastic_offsets(50, 28, 28, 20.0, 4.0, np.random.default_rng(3))
    assert a.shape == (50, 28, 28, 2) and a.dtype == np.float32
    np.testing.assert_allclose(b, 2 * a, rtol=1e-5, atol=1e-7)
    assert np.abs(a).max() > 0
    step = np.abs(np.diff(a, axis=2)).mean()
    assert step < 0.2 * np.abs(a).mean()  # white noise would give a step ~ the value itself
    np.testing.assert_array_equal(elastic_offsets(2, 5, 5, 0.0, 4.0, np.random.default_rng(0)),
                                  np.zeros((2, 5, 5, 2), np.float32))
    with pytest.raises(ConfigError, match="elastic"):
        elastic_offsets(2, 5, 5, 1.0, 0.0, np.random.default_rng(0))

    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, 9, 11)).astype(np.float32))
    ident = affine_params(2, 9, 11, 0.0, 0.0, 0.0, np.random.default_rng(1))
    dy, dx = -1, 2  # sampling at (i + dy, j + dx): output (i, j) shows input (i + dy, j + dx)
    off = np.zeros((2, 9, 11, 2), np.float32)
    off[..., 0], off[..., 1] = 2 * dx / 11, 2 * dy / 9
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
    want = padded[:, :, 2 + dy:2 + dy + 9, 2 + dx:2 + dx + 11]
    np.testing.assert_allclose(warp_batch(x, ident, off).numpy(), want, atol=1e-5)

    # elastic draws come after the affine ones: alpha 0 reproduces the plain warp,
    # alpha > 0 changes the images but keeps dtype and range
    imgs = np.random.default_rng(5).integers(0, 256, (20, 12, 12, 1), dtype=np.uint8)
    plain = random_affine(imgs, 1, 5, 0.05, np.random.default_rng(9))
    np.testing.assert_array_equal(random_affine(imgs, 1, 5, 0.05, np.random.default_rng(9), 0.0), plain)
    bent = random_affine(imgs, 1, 5, 0.05, np.random.default_rng(9), elastic=8.0, elastic_sigma=2.0)
    assert bent.dtype == np.uint8 and (bent != plain).mean() > 0.3
