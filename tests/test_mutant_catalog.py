"""The mutant catalog stays applicable: every mutant's text occurs exactly once in the code it
mutates and its tests exist (running the mutants themselves takes minutes: see README,
"Mutation testing")."""

from __future__ import annotations

from pathlib import Path

from tests.mutants.catalog import MUTANTS

ROOT = Path(__file__).resolve().parent.parent


def test_every_mutant_applies_and_names_real_tests() -> None:
    assert len(MUTANTS) >= 16
    for m in MUTANTS:
        text = (ROOT / m.path).read_text()
        assert text.count(m.old) == 1, (m.name, m.path)
        assert m.old != m.new
        for t in m.tests:
            path, _, func = t.partition("::")
            src = (ROOT / path).read_text()
            assert not func or f"def {func}(" in src, (m.name, t)
