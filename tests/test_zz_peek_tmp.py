from test_resume import runs  # noqa
import json
def test_peek(runs):
    for n, m in runs["stopped_at"].items(): print(n, m["step"], m["batch_index"])
    for n, s in runs["after_kill"].items(): print(n, json.loads(str(s["checkpoint"]["meta"]))["step"], s["files"])
