"""bptrain's Python API end to end, as a notebook would run it (each block is a cell):
train on the shipped digits, reload the run, predict on raw inputs, read the numbers.

    python examples/python_api.py [RUN_DIR]       # default runs/python-api (a fresh suffix if taken)
"""
import sys
from pathlib import Path

import numpy as np

import bptrain

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "mlp.yaml"
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs") / "python-api"

# %% Train: a tenth of the digits is held out as a test split that chooses nothing.
# progress=True shows what `bptrain run` shows (in a notebook too); the result displays itself
# as a line of numbers, and in a notebook as a small card with the loss curves.
cfg = bptrain.load_config(CONFIG, ["train.epochs=8", "data.test_fraction=0.1"])
result = bptrain.train(cfg, out=OUT, progress=True)
print(result)

# %% Reload the run with its best weights (weights="final" for the last ones).
run = bptrain.load_run(result.run_dir)
print(run)

# %% Predict on raw inputs: the pixel values 0..16 as the data holds them. The run applies the
# standardization it was trained with; model.predict alone would not.
raw = bptrain.load_dataset("digits", standardize=False, test_fraction=0.1)
predicted = run.predict(raw.X_test)
print("first predictions:", predicted[:10], "true:", raw.y_test[:10])
print("probabilities of the first image:", np.round(run.predict_proba(raw.X_test[:1]), 3))
images = raw.X_test.reshape(-1, 8, 8)                 # (N, 8, 8) images work as well
assert (run.predict(images) == predicted).all()

# %% The numbers: what `bptrain eval --split test` reports, and the same by hand.
evaluation, = run.evaluate(split="test")
by_hand = float(np.mean(predicted == raw.y_test))
print(f"test accuracy {evaluation.accuracy:.2%} (by hand {by_hand:.2%}), "
      f"macro F1 {evaluation.per_class()['macro']['f1']:.3f}")
print("summary.json's test entry:", run.summary["test"])
assert by_hand == evaluation.accuracy == run.summary["test"]["best"]["accuracy"]
