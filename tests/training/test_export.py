"""Issue 16 item 5: `bptrain export` writes ONNX files that onnxruntime runs on raw inputs and
that give bptrain's own scores (1e-5 in float32, 1e-10 in float64), for every layer type."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import bptrain.engine.gates.merge  # noqa: E402,F401  (registers concat)
from bptrain.errors import BptrainError  # noqa: E402
from bptrain.net.config import load_config  # noqa: E402
from bptrain.net.data import load_dataset, load_npz_safely  # noqa: E402
from bptrain.training.export import EXPORTERS, export_run, to_onnx  # noqa: E402
from bptrain.training.predict import load_run  # noqa: E402
from bptrain.training.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MLP = ROOT / "configs" / "mlp.yaml"
SHORT = ["train.iterations=25", "regularization.strength=0.001"]
TOL = {"float32": 1e-5, "float64": 1e-10}

LAYERS = {
    "mlp": [],
    "batchnorm_mlp": ["model.hidden=[32, 16]", "model.normalization=batchnorm",
                      "model.activation=elu", "model.dropout=0.2"],
    "layernorm_mlp": ["model.hidden=[24]", "model.normalization=layernorm",
                      "model.activation=leaky_relu", "model.slope=0.1", "model.bias=false"],
    "residual_mlp": ["model.layers=[{type: affine, units: 16}, "
                     "{type: residual, layers: [{type: sigmoid}, {type: affine, units: 16}]}, "
                     "{type: residual, layers: [{type: tanh}, {type: affine, units: 16}]}, "
                     "{type: relu}, {type: affine}]"],
    "merges": ["model.layers=[{type: affine, units: 12, name: a}, {type: tanh, name: t}, "
               "{type: affine, units: 12, input: a, name: b}, {type: relu, name: r}, "
               "{type: add, inputs: [t, r], name: s}, {type: concat, inputs: [s, a, t]}, "
               "{type: affine}]"],
    "convnet": ["model.layers=[{type: conv, filters: 4, size: 3, pad: 1}, "
                "{type: spatial_batchnorm}, {type: relu}, {type: maxpool, size: 2, stride: 2}, "
                "{type: conv, filters: 4, size: 3, pad: 1, bias: false}, "
                "{type: groupnorm, groups: 2}, {type: elu}, {type: avgpool, size: 2, stride: 2}, "
                "{type: flatten}, {type: dropout, p: 0.1}, {type: affine}]",
                "optimizer.type=adam", "optimizer.lr=0.003"],
    "strided_conv": ["model.layers=[{type: conv, filters: 3, size: 4, stride: 2, pad: 1}, "
                     "{type: leaky_relu}, {type: maxpool, size: 3, stride: 1}, "
                     "{type: avgpool, size: 2, stride: 1}, {type: affine}]"],
}
CASES = [(name, dtype) for name in LAYERS for dtype in ("float32", "float64")]


@pytest.fixture(scope="module")
def raw_digits():
    """The digits as a user has them: raw pixel values 0..16, not standardized."""
    return load_dataset("digits", val_fraction=0.0, standardize=False).X_train[:300]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    made = {}
    for name, dtype in CASES:
        cfg = load_config(MLP, SHORT + LAYERS[name] + [f"train.dtype={dtype}"])
        run = train(cfg, out=base / f"{name}-{dtype}").run_dir
        made[name, dtype] = (run, export_run(run)[0])
    return made


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name, dtype", CASES)
def test_onnxruntime_gives_bptrains_scores_on_raw_inputs(exported, raw_digits, name, dtype):
    run_dir, path = exported[name, dtype]
    assert path == run_dir / "model.onnx"
    scores, probs = session(path).run(["scores", "probabilities"],
                                      {"X": raw_digits.astype(dtype)})
    run = load_run(run_dir, "best")
    assert scores.dtype == np.dtype(dtype) and scores.shape == (300, 10)
    # the reference: the saved standardization by hand, then bptrain's Model.scores
    saved = load_npz_safely(run_dir / "model.npz")
    X = ((raw_digits - saved["_feature_mean"]) / saved["_feature_std"]).astype(dtype)
    want = run.model.scores(X)
    tol = TOL[dtype]
    np.testing.assert_allclose(scores, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(scores, run.scores(raw_digits), rtol=tol, atol=tol)
    e = np.exp(want - want.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(axis=1, keepdims=True), rtol=tol, atol=tol)
    assert (scores.argmax(1) == run.predict(raw_digits)).all()


def test_every_library_layer_type_has_an_exporter_and_was_exported(exported):
    from bptrain.engine.gate import LAYER_KINDS, registry
    library = {c.__name__ for c in registry.classes(LAYER_KINDS)
               if c.__module__.startswith("bptrain.")}  # not other tests' user gates
    assert library <= set(EXPORTERS), library - set(EXPORTERS)
    used = set()
    for run_dir, path in exported.values():
        used |= {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Conv", "MaxPool", "AveragePool", "BatchNormalization", "LayerNormalization",
            "Concat", "Gather", "Softmax", "Sub", "Div", "Elu", "LeakyRelu"} <= used


def test_float64_avoids_kernels_onnxruntime_lacks(exported):
    ops = {n.op_type for n in onnx.load(str(exported["convnet", "float64"][1])).graph.node}
    assert not ops & {"Conv", "AveragePool", "Elu", "BatchNormalization"}
    ops32 = {n.op_type for n in onnx.load(str(exported["convnet", "float32"][1])).graph.node}
    assert {"Conv", "AveragePool", "Elu", "BatchNormalization"} <= ops32


def test_final_weights_svm_and_regression(tmp_path, raw_digits):
    run = train(load_config(MLP, SHORT + ["loss.type=svm", "model.hidden=[16]"]),
                out=tmp_path / "svm").run_dir
    path, trained = export_run(run, tmp_path / "out" / "svm.onnx", weights="final")
    assert trained.weights == "model.npz"
    s = session(path)
    assert [o.name for o in s.get_outputs()] == ["scores"]  # scores of an SVM: no softmax
    np.testing.assert_allclose(s.run(None, {"X": raw_digits})[0],
                               load_run(run, "final").scores(raw_digits), rtol=1e-10, atol=1e-10)
    reg = train(load_config(ROOT / "configs" / "regression.yaml", ["train.iterations=20"]),
                out=tmp_path / "reg").run_dir
    path, trained = export_run(reg)
    X = np.random.default_rng(0).normal(size=(7, trained.input_dim))
    np.testing.assert_allclose(session(path).run(None, {"X": X})[0], trained.scores(X),
                               rtol=1e-10, atol=1e-10)


def test_a_gate_without_mapping_is_a_clear_error(tmp_path):
    gate = ROOT / "tests" / "fixtures" / "learner_gates.py"
    cfg = load_config(MLP, SHORT + [f"model.layers=[{{type: affine, units: 8}}, "
                                    f"{{type: gate, class: '{gate}:GoodSigmoid'}}, "
                                    "{type: affine}]"])
    run = train(cfg, out=tmp_path / "user").run_dir
    with pytest.raises(BptrainError, match=r"GoodSigmoid\) has no ONNX mapping") as info:
        export_run(run)
    assert "EXPORTERS" in str(info.value) and not (run / "model.onnx").exists()


def test_without_onnx_installed_the_error_says_what_to_install(tmp_path, monkeypatch):
    from bptrain.net.model import build_model
    model = build_model({"model": {"hidden": [4]}}, 3, 2)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(BptrainError, match=r"pip install 'bptrain\[onnx\]'"):
        to_onnx(model)


def test_cli_export(exported, tmp_path):
    from typer.testing import CliRunner

    from bptrain.app.cli import app
    run_dir, _ = exported["mlp", "float32"]
    out = tmp_path / "m.onnx"
    r = CliRunner().invoke(app, ["export", str(run_dir), "-o", str(out), "--weights", "final"])
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output and "probabilities" in r.output
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["bptrain_weights"] == "model.npz"
    r = CliRunner().invoke(app, ["export", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "not a run directory" in r.output
