"""``python -m benchmarks.references`` at a small scale: every case runs in its own
subprocess and its figures are complete and sane (a few seconds: 1400-pixel canvases,
two jobs of two references)."""

from __future__ import annotations

import json

from benchmarks.references import CASES, main


def test_every_case_is_measured(tmp_path) -> None:
    path = tmp_path / "references.json"
    returned = main(["--side", "1400", "--jobs", "2", "--refs", "2", "--json", str(path)])
    figures = json.loads(path.read_text())
    assert figures == json.loads(json.dumps(returned))
    assert figures["settings"] == {
        "jobs": 2,
        "refs": 2,
        "side": 1400,
        "rss_cap_mib": 8192,
        "plain_allocator": False,
    }
    cases = {case["case"]: case for case in figures["cases"]}
    assert list(cases) == list(CASES)
    for name, case in cases.items():
        assert case["allocator_tuned"] is True
        assert case["jobs_prepared"] + case["jobs_refused"] == 2
        # Small canvases: the subprocess's own peak, not pytest's (torch may be loaded).
        assert case["baseline_rss_mib"] <= case["peak_rss_mib"] < 400
        assert case["file_bytes"] > 0 and case["seconds"] > 0
        if name.endswith("truncated"):
            assert case["jobs_refused"] == 2 and "truncated" in case["first_error"]
        else:
            assert case["jobs_prepared"] == 2, case
