"""Typed errors of the secure aggregation layer."""


class InvalidCiphertextError(ValueError):
    """Ciphertext reply from a node that fails validation."""


class InvalidPartialDecryptionError(ValueError):
    """Threshold Paillier partial decryption whose proof of correctness fails."""

    def __init__(self, party_index: int, reason: str) -> None:
        super().__init__(
            f"partial decryption from party {party_index} is invalid: {reason}; "
            "drop this party's share and combine the shares of other parties"
        )
        self.party_index = party_index


class InsufficientSharesError(ValueError):
    """Too few partial decryptions to reach the decryption threshold."""
