"""The golden run (tests/golden/golden_run.py) gives the bits it recorded: every algorithm,
form and composition, 50 steps, parameters after every step and the final checkpoint."""
import json
import sys
from pathlib import Path

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))
import golden_run  # noqa: E402


def test_every_case_gives_the_recorded_bits():
    recorded = json.loads((GOLDEN / "golden.json").read_text())
    now = golden_run.digests()
    assert sorted(now) == sorted(recorded), "the golden run's cases changed: rerecord on purpose"
    for part in ("trajectory", "checkpoint"):
        changed = [k for k in recorded if now[k][part] != recorded[k][part]]
        assert not changed, f"{len(changed)} cases changed their {part} bits: {changed}"
