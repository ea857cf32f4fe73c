"""Shared test fixtures: where the reference data lies, and tolerances with their reasons."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

#: The paper's reference checkpoints and values (a copy of the team's shared/data/reference, kept in the repository
#: so that a fresh clone tests on its own); HF_REPSIM_REFERENCE points elsewhere.
REFERENCE = Path(os.environ.get("HF_REPSIM_REFERENCE", Path(__file__).resolve().parent / "data/reference"))

#: Deterministic float64 quantities computed two ways (moments vs. direct): rounding only.
EXACT_RTOL = 1e-9


@pytest.fixture(scope="session")
def reference_rows() -> list[dict]:
    path = REFERENCE / "reference_K4.json"
    if not path.exists():
        raise FileNotFoundError(
            f"Expected the reference data at {REFERENCE} (tests/data/reference); set HF_REPSIM_REFERENCE to its folder."
        )
    return json.loads(path.read_text())["pairs"]
