"""bptrain/training/rundir.py: the one owner of the run directory's files."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bptrain.training import rundir
from bptrain.training.rundir import RunDir, atomic_write_bytes, parse_metrics


def test_the_one_rule_for_metrics_a_torn_or_foreign_line_ends_the_log():
    good = [{"epoch": 1, "step": 10, "val_acc": 0.5}, {"epoch": 2, "step": 20}]
    text = "".join(json.dumps(r) + "\n" for r in good)
    assert parse_metrics(text) == good
    assert parse_metrics(text + '{"epoch": 3, "st') == good               # torn last line
    assert parse_metrics(text + '{"epoch": "3", "step": 30}\n') == good     # a string epoch
    assert parse_metrics(text + "[1, 2]\n" + json.dumps(good[0])) == good   # not a record
    assert parse_metrics(text, upto_step=10) == good[:1]                    # a resume's cut


def test_atomic_writes_leave_the_old_file_and_no_tmp_on_failure(tmp_path):
    path = tmp_path / "summary.json"
    rundir.save_json(path, {"a": 1})

    def dies(f):
        f.write(b"{\"a\": 2")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write_bytes(path, dies)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_create_never_reuses_a_run_and_the_reader_sees_what_the_writer_wrote(tmp_path):
    a = RunDir.create(tmp_path / "mlp")
    a.write_config("name: mlp\n")
    b = RunDir.create(tmp_path / "mlp")
    assert (a.path.name, b.path.name) == ("mlp", "mlp-2")
    with a.open_metrics() as f:
        f.write(json.dumps({"epoch": 1, "step": 5}) + "\n")
    assert a.read_metrics() == [{"epoch": 1, "step": 5}]
    a.save_arrays(rundir.BEST, {"W1": np.eye(2)})
    with np.load(a / rundir.BEST) as z:
        np.testing.assert_array_equal(z["W1"], np.eye(2))
    summary = {"steps": 5, "epochs": 1, "seconds": 0.5,
               "best": {"epoch": 1, "step": 5, "val_acc": 0.9}}
    a.write_summary(summary)
    assert a.read_summary() == summary
    a.write_summary({**summary, "steps": "five"})
    assert a.read_summary() is None and "'steps' is 'five'" in a.load_summary()[1]
    (a / rundir.SUMMARY).write_bytes(b"\xff\xfe")
    assert a.read_summary() is None   # damaged: None, never an exception
