"""Shared base of the CKKS rules whose committee decrypts a few scalars per node.

FLTrust and norm bounding over ciphertexts both compute per-node scalars under
encryption, such as inner products and squared norms. The key committee decrypts
only those, and the server sums the updates with weights that already divide by
their total.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Message

from linguachain.privacy.records import (
    DECRYPT_SCORES_MESSAGE_TYPE,
    SCALARS_PER_NODE_KEY,
    SCORES_KEY,
)
from linguachain.strategies.screening import RoundReport
from linguachain.strategies.secure_fedavg import (
    CommitteeRequest,
    LoadedReply,
    SecureAggregator,
)


class SecureScalarAggregator(SecureAggregator):
    """Secure aggregation that decrypts per-node scalars before a weighted sum."""

    def load_replies(
        self, server_round: int, replies: Iterable[Message]
    ) -> list[LoadedReply]:
        """Start the round's report, then validate the replies into it.

        The base class records each rejected node there with a score of 0.
        """
        self.round_reports[server_round] = RoundReport()
        return super().load_replies(server_round, replies)

    def decrypt_sum(
        self,
        server_round: int,
        summed: list[bytes],
        total_weight: int,
        num_replies: int,
    ) -> np.ndarray:
        """Have the key committee decrypt the weighted sum, already an average."""
        # The weights divide by their own total, so the divisor is 1, not the
        # total block weight.
        return super().decrypt_sum(server_round, summed, 1, num_replies)

    def decrypt_node_scalars(
        self,
        server_round: int,
        ciphertexts: list[bytes],
        per_node: int,
        description: str,
        noun: str,
    ) -> np.ndarray:
        """Have the key committee decrypt `per_node` scalars per node, node by row."""
        assert self.cipher is not None
        num_nodes = len(ciphertexts) // per_node
        return self.committee_decrypt(
            server_round,
            CommitteeRequest(
                message_type=DECRYPT_SCORES_MESSAGE_TYPE,
                fields={
                    "scheme": self.cipher.scheme,
                    "server-round": server_round,
                    "key-fingerprint": self.cipher.fingerprint,
                    "num-scores": num_nodes,
                    SCALARS_PER_NODE_KEY: per_node,
                },
                ciphertexts=ciphertexts,
                result_key=SCORES_KEY,
                shape=(num_nodes, per_node),
                description=description,
                noun=noun,
                relative=True,
            ),
        )
