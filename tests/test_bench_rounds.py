"""The benchmark's rounds: which round is reported, and that every round is checked for losses.

These run the bench's own selection and checks on made-up run results; no
process is started.
"""

import pytest

from bench.__main__ import parse_args
from bench.report import RunResult, WorkloadResult, lost_or_mismatched
from bench.workloads import median_round


def run(label, ratio=None, lost=0, mismatches=0):
    return RunResult(
        label=label, sent=10, accepted=10, delivered=10 - lost, lost=lost, duplicates=0, repeated_event_ids=0,
        mismatches=mismatches, failed_sends=0, seconds=1.0, throughput=10.0, accepted_per_second=10.0,
        latency_ms=None, ratio_to_bare=ratio,
    )


def rounds_of(*ratios):
    return [(run("bare"), run("hookrelay", ratio)) for ratio in ratios]


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [((0.5,), 0.5), ((0.61, 0.52, 0.58), 0.58), ((0.7, 0.4, 0.6, 0.5), 0.5), ((0.55, 0.62, 0.49, 0.6, 0.58), 0.58)],
)
def test_median_round_is_reported(ratios, expected):
    """The reported pair is the median ratio's, the lower middle one for an even count."""
    bare, relayed = median_round(rounds_of(*ratios))
    assert relayed.ratio_to_bare == expected
    assert bare.label == "bare"


def test_loss_in_other_round_fails_checks():
    """A lost event or a changed body in a round that is not reported still fails the checks."""
    result = WorkloadResult("1kb-x50", "title", runs=[run("bare"), run("hookrelay", 0.6)])
    result.other_rounds = [run("bare"), run("hookrelay", 0.5, lost=1), run("bare"), run("hookrelay", 0.7, mismatches=2)]
    result.check_delivery()

    checks = {check.name: check for check in result.checks}
    assert checks["lost"].measured == "1"
    assert checks["lost"].passed is False
    assert checks["body mismatches"].measured == "2"
    assert lost_or_mismatched([result], strays=0) is True


def test_rounds_must_be_positive(capsys):
    """--rounds 0 is rejected with a message that names the value."""
    with pytest.raises(SystemExit):
        parse_args(["--rounds", "0"])
    assert "0 is not a positive count" in capsys.readouterr().err
