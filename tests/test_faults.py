"""The bad-input corpus (tests/faults/cases.yaml, #21): every case ends with a clear one-line error
naming the problem, exit code 2, no traceback, and nothing written (no trial folder, no config
rewritten beside a checkpoint)."""
import pytest

import launch
from tests.faults.corpus import load_cases, launch_args, make_checkpoints, written_trials

CASES = load_cases()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return make_checkpoints(tmp_path_factory.mktemp("fault-ckpts"))


def test_corpus_is_large_and_named():
    assert len(CASES) >= 25
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_fails_cleanly_before_any_work(case, checkpoints, tmp_path, capsys):
    exp_root = tmp_path / "outputs"
    code = launch.main(launch_args(case, exp_root, checkpoints))
    out = capsys.readouterr()
    assert code == case.get("code", 2), out.err
    assert "Traceback" not in out.err + out.out
    lines = [l for l in out.err.splitlines() if l.startswith("lift3d:")]
    assert len(lines) == 1 and lines[0].startswith("lift3d: error: "), out.err
    for piece in case["expect"]:
        assert piece in lines[0], f"{piece!r} not in {lines[0]!r}"
    assert written_trials(exp_root, checkpoints) == []
