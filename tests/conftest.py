"""Shared test fixtures: where the reference data lies, and tolerances with their reasons."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

#: The reference checkpoints and values shipped beside the project (../shared/data/reference).
REFERENCE = Path(os.environ.get("HF_REPSIM_REFERENCE", Path(__file__).resolve().parents[2] / "shared/data/reference"))

#: Deterministic float64 quantities computed two ways (moments vs. direct): rounding only.
EXACT_RTOL = 1e-9


@pytest.fixture(scope="session")
def reference_rows() -> list[dict]:
    path = REFERENCE / "reference_K4.json"
    if not path.exists():
        raise FileNotFoundError(
            f"Expected the reference data at {REFERENCE} (../shared/data/reference beside the project); "
            f"set HF_REPSIM_REFERENCE to its folder."
        )
    return json.loads(path.read_text())["pairs"]
