"""What a run keeps about its data, and the test split's one evaluation at the end of training.

The test split (data.test_fraction, or an npz's X_test/y_test) takes part in no choice: the
best epoch, early stopping and sweep rankings read the validation split only. When training
ends, the final weights and the best weights (best.npz) are evaluated on it once, into the
summary's "test" entry.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bptrain.net.data import Dataset, load_npz_safely
from bptrain.net.model import Model
from bptrain.training import rundir


def data_info(data: Dataset, model: Model, source: str | None = None) -> dict[str, Any]:
    """data.json: what the model reads and what its outputs mean, so a trained run can
    predict without its training data."""
    return {"source": source, "name": data.name,
            "input_shape": [int(s) for s in model.input_shape],
            "input_dim": data.input_dim,
            "image_shape": list(data.image_shape) if data.image_shape else None,
            "num_classes": data.num_classes, "output_dim": data.output_dim,
            "classes": data.class_names, "feature_names": data.feature_names,
            "label": data.label_name,
            "samples": {"train": len(data.X_train), "val": len(data.X_val),
                        "test": len(data.X_test)}}


def _evaluate(model: Model, X: np.ndarray, y: np.ndarray, classify: bool) -> dict[str, Any]:
    loss, scores = model.evaluate_loss(X, y)
    acc = (float(np.mean(scores.argmax(axis=1) == y))
           if classify and model.num_classes else None)
    return {"loss": loss, "accuracy": acc}


def evaluate_test_split(trainer: Any) -> dict[str, Any] | None:
    """{"n", "final": {loss, accuracy}, "best": {...}} on the test split; None without one.
    The model is left with the weights it had (the final ones)."""
    d, m = trainer.data, trainer.model
    if d.X_test is None or not len(d.X_test):
        return None
    X = np.ascontiguousarray(d.X_test, dtype=m.dtype).reshape((-1, *m.input_shape))
    y = d.y_test if d.is_classification else np.ascontiguousarray(d.y_test, dtype=m.dtype)
    out: dict[str, Any] = {"n": int(len(y)), "final": _evaluate(m, X, y, d.is_classification)}
    best = trainer.dir / rundir.BEST
    if best.is_file():
        arrays = load_npz_safely(best)
        final = {k: np.array(v) for k, v in m.params.items()}
        final_buffers = m.buffer_arrays()
        try:
            for k in m.params:
                m.params[k] = arrays[k]
            m.load_buffers({k: arrays[k] for k in m.buffers})
            out["best"] = _evaluate(m, X, y, d.is_classification)
        finally:
            for k, v in final.items():
                m.params[k] = v
            m.load_buffers(final_buffers)
    return out
