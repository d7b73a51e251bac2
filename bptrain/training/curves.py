"""The loss curves as a PNG in the run directory, when matplotlib is installed (the optional
`plot` extra). Without it nothing happens: the terminal chart is always there."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def save_loss_curves(path: Path, history: Sequence[dict[str, Any]], title: str) -> bool:
    """Train and validation loss (and accuracy, if any) against epochs; True if written."""
    if len(history) < 2 or not have_matplotlib():
        return False
    import matplotlib
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    has_acc = any(r.get("val_acc") is not None or r.get("train_acc") is not None
                  for r in history)
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4))
    axes = axes if has_acc else [axes]
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        points = [(e, r[key]) for e, r in zip(epochs, history) if r.get(key) is not None]
        if points:
            axes[0].plot(*zip(*points), label=label)
    losses = [r["train_loss"] for r in history if r.get("train_loss")]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 1e3:
        axes[0].set_yscale("log")
    axes[0].set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    axes[0].legend()
    if has_acc:
        for key, label in (("train_acc", "train"), ("val_acc", "val")):
            points = [(e, r[key]) for e, r in zip(epochs, history) if r.get(key) is not None]
            if points:
                axes[1].plot(*zip(*points), label=label)
        axes[1].set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
        axes[1].legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)  # atomic, like every run file
    return True
