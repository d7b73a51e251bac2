"""Convolutional networks from YAML: image shapes end to end, the builder's names and fan-ins,
every gradient against numbers, augmentation, resume, the shipped configs."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from bptrain.engine.gradcheck import check_graph
from bptrain.errors import ConfigError, DataError
from bptrain.net.augment import augment_batch
from bptrain.net.config import load_config
from bptrain.net.data import load_data
from bptrain.net.model import build_for_data, build_model
from bptrain.training.trainer import Trainer, train
from conftest import Boom, StopAtStep  # tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
CONVNET = ROOT / "configs" / "convnet.yaml"

SMALL = [{"type": "conv", "filters": 4, "size": 3, "pad": 1},
         {"type": "spatial_batchnorm"}, {"type": "relu"},
         {"type": "maxpool", "size": 2, "stride": 2},
         {"type": "affine", "units": 7}, {"type": "relu"}, {"type": "affine"}]


def small_cfg(layers=SMALL, **train):
    return load_config({"seed": 1, "model": {"layers": layers},
                        "regularization": {"strength": 0.01},
                        "train": {"batch_size": 16, **train}})


def conv_ref(x, W, b, pad):
    """Direct convolution, loops over filters and kernel offsets (independent of im2col)."""
    N, C, H, Wd = x.shape
    F, _, k, _ = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = H + 2 * pad - k + 1, Wd + 2 * pad - k + 1
    out = np.zeros((N, F, Ho, Wo))
    for f in range(F):
        for i in range(k):
            for j in range(k):
                out[:, f] += np.einsum("nchw,c->nhw", xp[:, :, i:i + Ho, j:j + Wo], W[f, :, i, j])
        out[:, f] += b[f]
    return out


def test_build_model_for_images_names_params_in_config_order_and_matches_numpy():
    model = build_model(small_cfg(), input_dim=(2, 6, 6), output_dim=3)
    assert list(model.params) == ["W1", "b1", "gamma1", "beta1", "W2", "b2", "W3", "b3"]
    P = model.params
    assert P["W1"].shape == (4, 2, 3, 3) and P["W2"].shape == (4 * 3 * 3, 7)
    assert [l.out_shape for l in model.layers] == [(4, 6, 6), (4, 6, 6), (4, 6, 6), (4, 3, 3),
                                                   (36,), (7,), (7,), (3,)]
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((5, 2, 6, 6)), rng.integers(0, 3, 5)
    loss, grads = model.loss_and_grads(X, y)
    # the same network by hand (spatial batch norm in training mode: batch statistics)
    h = conv_ref(X, P["W1"], P["b1"], 1)
    mu, var = h.mean(axis=(0, 2, 3), keepdims=True), h.var(axis=(0, 2, 3), keepdims=True)
    h = (h - mu) / np.sqrt(var + 1e-5) * P["gamma1"][:, None, None] + P["beta1"][:, None, None]
    h = np.maximum(h, 0).reshape(5, 4, 3, 2, 3, 2).max(axis=(3, 5)).reshape(5, -1)
    h = np.maximum(h @ P["W2"] + P["b2"], 0)
    s = h @ P["W3"] + P["b3"]
    s = s - s.max(axis=1, keepdims=True)
    data_loss = -np.mean(s[np.arange(5), y] - np.log(np.exp(s).sum(axis=1)))
    reg = 0.5 * 0.01 * sum(np.sum(P[w] ** 2) for w in ("W1", "W2", "W3"))
    assert loss == pytest.approx(data_loss + reg, rel=1e-12)
    assert set(grads) == set(P)


def test_every_gradient_of_a_convnet_checks_in_float64():
    model = build_model(small_cfg(), input_dim=(2, 6, 6), output_dim=3)
    rng = np.random.default_rng(2)
    model.graph.feed(X=rng.standard_normal((4, 2, 6, 6)), y=rng.integers(0, 3, 4))
    results = check_graph(model.graph, model.loss, tol=1e-6)
    assert [r.name for r in results] == list(model.params)
    assert all(r.passed for r in results), [r for r in results if not r.passed]


def test_he_initialization_uses_the_filters_fan_in():
    cfg = load_config({"model": {"init": "he", "layers": [
        {"type": "conv", "filters": 64, "size": 5}, {"type": "affine"}]}})
    W = build_model(cfg, (3, 9, 9), 2).params["W1"]
    assert W.std() == pytest.approx(np.sqrt(2.0 / (3 * 5 * 5)), rel=0.03)


def test_a_size_that_does_not_divide_names_the_layer():
    cfg = small_cfg([{"type": "conv", "filters": 2, "size": 3, "stride": 2}, {"type": "affine"}])
    with pytest.raises(ConfigError, match=r"model.layers\[0\] \(conv\).*not a whole number"):
        build_model(cfg, (1, 6, 6), 3)


def test_digits_reach_a_convnet_as_images_standardized_per_channel():
    cfg = load_config(CONVNET)
    data = load_data(cfg)
    assert data.image_shape == (1, 8, 8)
    assert np.allclose(data.feature_mean, data.feature_mean[0])  # one mean for the channel
    assert abs(data.X_train.mean()) < 1e-12 and data.X_train.std() == pytest.approx(1.0)
    # a flat network keeps per-feature standardization
    flat = load_data(load_config({}))
    assert not np.allclose(flat.feature_std, flat.feature_std[0])
    model = build_for_data(cfg, data)
    assert model.input_shape == (1, 8, 8)


def test_image_shapes_from_npz_and_from_data_shape(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 2, 4, 4))
    y = np.arange(40) % 3
    np.savez(tmp_path / "img.npz", X=X, y=y)
    np.savez(tmp_path / "flat.npz", X=X.reshape(40, -1), y=y)
    layers = {"model": {"layers": [{"type": "conv", "filters": 3, "size": 3, "pad": 1},
                                   {"type": "relu"}, {"type": "affine"}]}}
    for name, extra in (("img.npz", {}), ("flat.npz", {"shape": [2, 4, 4]})):
        cfg = load_config({**layers, "data": {"source": "npz", "path": str(tmp_path / name),
                                              **extra}})
        assert build_for_data(cfg, load_data(cfg)).input_shape == (2, 4, 4)
    cfg = load_config({**layers, "data": {"source": "npz", "path": str(tmp_path / "flat.npz")}})
    with pytest.raises(ConfigError, match="data.shape"):
        build_for_data(cfg, load_data(cfg))
    cfg = load_config({**layers, "data": {"source": "npz", "path": str(tmp_path / "flat.npz"),
                                          "shape": [3, 4, 4]}})
    with pytest.raises(DataError, match=r"data.shape: \[3, 4, 4\] does not fit"):
        load_data(cfg)


def test_augment_batch_crops_and_flips_as_drawn():
    X = np.arange(3 * 2 * 4 * 5, dtype=np.float32).reshape(3, 2, 4, 5)
    out = augment_batch(X, np.random.default_rng(7), flip=True, crop_pad=2)
    assert out.dtype == np.float32 and out.shape == X.shape
    rng = np.random.default_rng(7)  # replay the same draws by hand
    dy, dx = rng.integers(0, 5, 3), rng.integers(0, 5, 3)
    mirror = rng.random(3) < 0.5
    padded = np.pad(X, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for n in range(3):
        want = padded[n, :, dy[n]:dy[n] + 4, dx[n]:dx[n] + 5]
        np.testing.assert_array_equal(out[n], want[..., ::-1] if mirror[n] else want)
    assert X[0, 0, 0, 0] == 0  # the input is untouched


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_convnet_with_augmentation_and_batchnorm_resumes_bit_identically(tmp_path):
    cfg = {"seed": 4, "data": {"source": "digits", "val_fraction": 0.9,
                               "augment": {"flip": True, "crop_pad": 1}},
           "model": {"layers": SMALL}, "optimizer": {"type": "adam", "lr": 0.01},
           "train": {"epochs": 3, "batch_size": 32}}
    a = train(cfg, out=tmp_path / "a")
    with pytest.raises(Boom):
        train(cfg, out=tmp_path / "b", reporter=StopAtStep(7))
    b = train(None, resume=tmp_path / "b")
    A, B = _arrays(a.run_dir / "model.npz"), _arrays(b.run_dir / "model.npz")
    assert set(A) == set(B) and "running_mean1" in A and "running_var1" in A
    for k in A:
        assert np.array_equal(A[k], B[k]), k
    # and augmentation really ran: without it the weights differ
    cfg["data"]["augment"] = {}
    c = train(cfg, out=tmp_path / "c")
    assert not np.array_equal(_arrays(c.run_dir / "model.npz")["W1"], A["W1"])


def test_augment_on_flat_data_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.augment"):
        Trainer(load_config({"data": {"augment": {"flip": True}}}), tmp_path)


def test_float32_convnet_stays_float32(tmp_path):
    cfg = {"model": {"layers": SMALL}, "data": {"val_fraction": 0.9},
           "train": {"dtype": "float32", "epochs": 1}}
    t = Trainer(load_config(cfg), tmp_path)
    t.train_step(t.X[:16], t.y[:16], 0.01)
    for node in t.model.params.nodes():
        assert node.value.dtype == np.float32 and node.grad.dtype == np.float32


def _write_cifar(folder: Path, per_batch: int = 6) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        data = rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels.tolist()}, f)


def test_cifar10_convnet_config_runs_on_a_cifar_format_folder(tmp_path):
    _write_cifar(tmp_path / "cifar-10-batches-py")
    cfg = load_config(ROOT / "configs" / "cifar10-convnet.yaml",
                      [f"data.path={tmp_path / 'cifar-10-batches-py'}", "train.iterations=2"])
    model = build_for_data(cfg, load_data(cfg))
    assert model.input_shape == (3, 32, 32)
    assert [(n, v.shape) for n, v in model.params.items()] == [
        ("W1", (32, 3, 7, 7)), ("b1", (32,)), ("W2", (32 * 16 * 16, 100)), ("b2", (100,)),
        ("W3", (100, 10)), ("b3", (10,))]
    result = train(cfg, out=tmp_path / "run")
    assert result.summary["steps"] == 2 and np.isfinite(result.metrics["train_loss"])


def test_shipped_convnet_config_builds_with_the_expected_layers():
    cfg = load_config(CONVNET)
    model = build_for_data(cfg, load_data(cfg))
    kinds = [l.type for l in model.layers]
    assert kinds[:3] == ["conv", "spatial_batchnorm", "relu"] and "maxpool" in kinds
    assert "flatten" in kinds  # implicit, before the first affine layer


def test_dead_filters_are_reported_per_filter(tmp_path):
    cfg = load_config({"seed": 0, "data": {"val_fraction": 0.5},
                       "model": {"layers": [{"type": "conv", "filters": 4, "size": 3},
                                            {"type": "relu"}, {"type": "affine"}]},
                       "train": {"iterations": 1}})
    t = Trainer(cfg, tmp_path)
    b1 = t.model.params["b1"]
    b1[:2] = -1e3  # two filters can never fire
    rec = t.run().metrics
    assert rec["diagnostics"]["conv1"]["dead"] == pytest.approx(0.5)


def test_show_prints_each_layers_shape_params_and_multiply_adds():
    from typer.testing import CliRunner

    from bptrain.app.cli import app
    result = CliRunner().invoke(app, ["show", str(CONVNET)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = {c[0]: c for c in ([x.strip() for x in line.split("│")]
                              for line in result.output.splitlines() if "│" in line) if c[0]}
    n = 64
    assert rows["conv1"][3] == f"{n}x32x8x8" and rows["conv1"][5] == f"{n * 32 * 64 * 1 * 9:,}"
    assert rows["conv2"][5] == f"{n * 32 * 64 * 32 * 9:,}"
    assert rows["W1"][3] == "32x1x3x3" and rows["W1"][4] == f"{32 * 9:,}"
    assert rows["maxpool2"][3] == f"{n}x32x4x4" and rows["flatten2"][3] == f"{n}x512"
    total = n * (32 * 64 * 9 + 32 * 64 * 32 * 9 + 512 * 128 + 128 * 10)
    assert f"forward multiply-adds per batch of {n}: {total:,}" in " ".join(result.output.split())
