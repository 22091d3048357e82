"""What the records' settings digest sees beyond the suite's text: generators' versions and the suite's seed."""

from __future__ import annotations

import textwrap

from lukv_bench.config.suite import load_suite
from lukv_bench.data.corpus import CORPUS_VERSION
from lukv_bench.run.fingerprint import data_fingerprint, differences
from lukv_bench.tasks import needle


def test_a_new_generator_version_changes_the_fingerprint(monkeypatch) -> None:
    entry = {"name": "passkey", "type": "needle", "lengths": [100], "depths": [0.5]}
    before = data_fingerprint(entry)
    assert before == {"generator": f"{needle.VERSION}; {CORPUS_VERSION}"}
    monkeypatch.setattr(needle, "VERSION", "lukv-bench needle v2")
    after = data_fingerprint(entry)
    assert after != before
    assert differences({"data": {"passkey": before}}, {"data": {"passkey": after}}) == [
        f"tasks[passkey].generator: its data changed ({before['generator']} -> {after['generator']})"
    ]


def test_needle_seed_defaults_to_the_suites(tmp_path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent("""\
        name: s
        policies: [snapkv]
        budgets: [0.5]
        tasks: [{name: passkey, type: needle, lengths: [100], depths: [0.5]}]
        seed: 5
        """))
    assert load_suite(path).tasks[0]["seed"] == 5
