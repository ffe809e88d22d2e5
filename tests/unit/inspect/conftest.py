"""Fixtures of the inspect tests: the tiny models of tiny_families.py, built once per session."""

from __future__ import annotations

import pytest
from tiny_families import FAMILIES, make_model

from tests.conftest import make_tokenizer


@pytest.fixture(scope="session")
def tiny_lms() -> dict:
    """family -> (model, tokenizer), built once per session."""
    out = {}
    for family in FAMILIES:
        tokenizer, vocab_size = make_tokenizer(with_bos=family not in ("gpt2", "gpt_neox"))
        out[family] = (make_model(family, vocab_size), tokenizer)
    return out


@pytest.fixture(params=FAMILIES)
def family_lm(request: pytest.FixtureRequest, tiny_lms: dict):
    """(family, model, tokenizer) for each supported family in turn."""
    model, tokenizer = tiny_lms[request.param]
    return request.param, model, tokenizer
