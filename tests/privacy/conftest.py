"""Shared keys for the privacy tests, generated once per session."""

import pytest
import tenseal as ts

from linguachain.privacy import ckks
from linguachain.privacy.threshold import ThresholdDealing, deal_threshold_keys


@pytest.fixture(scope="session")
def sum_context() -> ts.Context:
    return ckks.create_secret_context("sum")


@pytest.fixture(scope="session")
def sum_public_context(sum_context: ts.Context) -> ts.Context:
    return ckks.make_public_context(sum_context)


@pytest.fixture(scope="session")
def dealing() -> ThresholdDealing:
    return deal_threshold_keys(num_parties=5, modulus_bits=1024)
