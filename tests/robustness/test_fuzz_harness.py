"""The fuzz harness's own machinery, with fake children and stubbed cases: the parent counts
a report line the moment it arrives, however the child's writes split into lines, and a case's
deadline covers that case alone."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import pytest

from . import fuzz_harness
from .fuzz_harness import _watch

# Case 0 begins and is refused, case 1 begins; then the child stops answering (case 1 hangs).
# CUT splits the bytes into two writes 0.2 s apart (0: all in one write).
FAKE_CHILD = """
import json, os, sys, time
cut = int(sys.argv[1])
msgs = [{"case": 0, "begin": True},
        {"case": 0, "class": "refused", "what": "", "detail": ""},
        {"case": 1, "begin": True}]
data = "".join(json.dumps(m) + "\\n" for m in msgs).encode()
if cut:
    os.write(1, data[:cut])
    time.sleep(0.2)
os.write(1, data[cut:])
time.sleep(60)
"""


@pytest.mark.parametrize("cut", [0, 40], ids=["one write", "a line split over two writes"])
def test_lines_that_arrive_together_are_all_read_before_waiting(cut: int):
    """A buffered readline after select returned one line and left the rest of the chunk in its
    buffer while select waited on an empty pipe: the hang was blamed on a case that had
    finished (or on none), and case 1 was timed from case 0's start."""
    proc = subprocess.Popen([sys.executable, "-c", FAKE_CHILD, str(cut)], stdout=subprocess.PIPE)
    counts: Counter = Counter()
    seen: list[int] = []
    try:
        finished, current, cls, _ = _watch(proc, 1.0, counts, [], lambda done, _: seen.append(done))
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert (finished, current, cls) == (0, 1, "hang")
    assert counts == Counter(refused=1) and seen == [1]


def test_a_clean_exit_after_the_last_report_is_not_a_crash():
    msgs = [{"case": 3, "begin": True}, {"case": 3, "class": "same", "what": "", "detail": ""}]
    script = f"import sys; sys.stdout.write({''.join(json.dumps(m) + chr(10) for m in msgs)!r})"
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    counts: Counter = Counter()
    with proc.stdout:
        assert _watch(proc, 5.0, counts, [], None) == (3, None, "", "")
    assert counts == Counter(same=1)


def test_the_model_child_warms_up_before_announcing_its_first_case(tmp_path, monkeypatch, capsys):
    """The first case's deadline once included the imports and ONNX Runtime's first session:
    under load, false hangs."""
    (tmp_path / "seed.onnx").write_bytes(b"seed")
    calls = []

    def classify(data: bytes, work) -> tuple[str, str]:
        calls.append((data, capsys.readouterr().out))  # what was announced before this call
        return "accepted", ""

    monkeypatch.setattr(fuzz_harness, "classify_model", classify)
    monkeypatch.setattr(fuzz_harness, "mutate_model", lambda *a: (0, b"mutated", "stub"))
    monkeypatch.setattr(fuzz_harness.resource, "setrlimit", lambda *a: None)  # not in pytest
    fuzz_harness.model_child(tmp_path, 0, 0, 1)
    assert calls[0] == (b"seed", "")  # the warm-up: the seed itself, nothing announced yet
    assert calls[1][0] == b"mutated" and json.loads(calls[1][1]) == {"case": 0, "begin": True}
