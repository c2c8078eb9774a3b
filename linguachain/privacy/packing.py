"""Fixed-point quantization and BatchCrypt-style packing into Paillier plaintexts.

Each value x is clipped to [-R, R] and quantized to q = round(x * 2^f), an integer
in [-Q, Q] with Q = floor(R * 2^f). The quantization error is at most 2^-(f+1) for
|x| <= Q / 2^f, which is all of [-R, R] when R * 2^f is an integer. The offset Q
makes every slot value u = q + Q non-negative, in [0, 2Q].

A slot has slot_bits = bit_length(max_parties * 2Q) bits, so the sum of up to
max_parties slot values never carries into the next slot. That headroom lets the
server add packed ciphertexts, as in BatchCrypt. A plaintext contains
floor((modulus_bits - 1) / slot_bits) slots, so it stays below 2^(modulus_bits - 1),
which is at most n. Unpacking a sum of k replies subtracts k * Q from each slot and
divides by 2^f.

Weighted sums: pack(values, weight=w) packs w * u per slot, so a reply of weight w
counts as w parties. The sum of w_i * (q_i + Q) unpacks with num_parties = sum of
w_i to sum(w_i * q_i) / 2^f, which is exact integer arithmetic on the quantized
values; max_parties then bounds the total weight.

Sizes for the default layout (R = 1, f = 16, max_parties = 100, 2048-bit n):
24-bit slots, 85 slots per ciphertext, 512-byte ciphertexts, 6.0 B/param. These
follow from the formulas above. ciphertexts_to_bytes in paillier.py writes exactly
ciphertext_bytes per ciphertext, which test_layout_serialized_size_matches checks.
Packing and unpacking loop over Python integers, one step per value.
"""

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Slot values are numpy int64, and float64 represents decoded slot sums exactly
# only below 2^53.
MAX_SLOT_BITS = 53


@dataclass(frozen=True)
class FixedPointPacking:
    """Quantization range and precision plus the slot layout of one plaintext."""

    clip_range: float = 1.0
    precision_bits: int = 16
    max_parties: int = 100
    modulus_bits: int = 2048

    def __post_init__(self) -> None:
        if not self.clip_range > 0 or not np.isfinite(self.clip_range):
            raise ValueError(
                f"clip_range must be a positive finite number, got {self.clip_range}"
            )
        if self.precision_bits < 0:
            raise ValueError(
                f"precision_bits must not be negative, got {self.precision_bits}"
            )
        if self.max_parties < 1:
            raise ValueError(f"max_parties must be at least 1, got {self.max_parties}")
        if self.offset < 1:
            raise ValueError(
                f"clip_range {self.clip_range} * 2^{self.precision_bits} is below 1, "
                "so every value quantizes to 0; raise precision_bits"
            )
        if self.slot_bits > MAX_SLOT_BITS:
            raise ValueError(
                f"slots of {self.slot_bits} bits exceed {MAX_SLOT_BITS}; lower "
                "clip_range, precision_bits or max_parties"
            )
        if self.slots_per_plaintext < 1:
            raise ValueError(
                f"a {self.modulus_bits}-bit modulus cannot hold one {self.slot_bits}"
                "-bit slot; use a larger key"
            )

    @property
    def scale(self) -> float:
        """Quantization step inverse, 2^precision_bits."""
        return float(2**self.precision_bits)

    @property
    def offset(self) -> int:
        """Q = floor(clip_range * 2^precision_bits), added to make slots non-negative."""
        return int(np.floor(self.clip_range * self.scale))

    @property
    def slot_bits(self) -> int:
        """Bits per slot, enough for the sum of max_parties values of at most 2Q."""
        return (self.max_parties * 2 * self.offset).bit_length()

    @property
    def slots_per_plaintext(self) -> int:
        """Values packed into one Paillier plaintext."""
        return (self.modulus_bits - 1) // self.slot_bits

    @property
    def ciphertext_bytes(self) -> int:
        """Serialized size of one ciphertext, an integer below n^2."""
        return (2 * self.modulus_bits + 7) // 8

    @property
    def bytes_per_parameter(self) -> float:
        """Ciphertext bytes sent per model parameter when every slot is used."""
        return self.ciphertext_bytes / self.slots_per_plaintext

    def count_plaintexts(self, length: int) -> int:
        """Return how many plaintexts hold a vector of this length."""
        return -(-length // self.slots_per_plaintext)

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Clip, quantize and offset values into int64 slot values in [0, 2Q]."""
        values = np.asarray(values)
        if values.ndim != 1:
            raise ValueError(f"expected a 1-D vector, got shape {values.shape}")
        if np.issubdtype(values.dtype, np.integer):
            # Clip integers before the float64 conversion, which rounds int64 values
            # above 2^53; the final clip below still applies the exact range.
            bound = int(np.ceil(self.clip_range)) + 1
            if np.issubdtype(values.dtype, np.unsignedinteger):
                values = np.minimum(values, bound)
            else:
                values = np.clip(values, -bound, bound)
        values = values.astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError("values contain NaN or inf; refusing to quantize them")

        quantized = np.rint(values * self.scale)
        clipped = np.clip(quantized, -self.offset, self.offset)
        num_clipped = int(np.count_nonzero(clipped != quantized))
        if num_clipped:
            logger.debug(
                "clipped %d of %d values to [-%g, %g]",
                num_clipped,
                values.size,
                self.clip_range,
                self.clip_range,
            )
        return clipped.astype(np.int64) + self.offset

    def pack(self, values: np.ndarray, weight: int = 1) -> list[int]:
        """Quantize values, multiply by weight and pack them, slot 0 lowest."""
        if isinstance(weight, bool) or not 1 <= int(weight) <= self.max_parties:
            raise ValueError(
                f"weight {weight!r} is outside [1, {self.max_parties}]; slots have "
                f"headroom for a total weight of max_parties={self.max_parties}"
            )
        slot_values = [int(weight) * value for value in self.quantize(values).tolist()]
        slots = self.slots_per_plaintext
        plaintexts = []
        for start in range(0, len(slot_values), slots):
            packed = 0
            for slot_value in reversed(slot_values[start : start + slots]):
                packed = (packed << self.slot_bits) | slot_value
            plaintexts.append(packed)
        return plaintexts

    def unpack_sum(
        self, plaintexts: list[int], length: int, num_parties: int
    ) -> np.ndarray:
        """Unpack the sum of num_parties packed vectors into float64 values."""
        if not 1 <= num_parties <= self.max_parties:
            raise ValueError(
                f"num_parties {num_parties} is outside [1, {self.max_parties}]; slots "
                f"have headroom for at most max_parties={self.max_parties} summands"
            )
        if len(plaintexts) != self.count_plaintexts(length):
            raise ValueError(
                f"{len(plaintexts)} plaintexts for {length} values; expected "
                f"{self.count_plaintexts(length)}"
            )

        mask = (1 << self.slot_bits) - 1
        slot_sums = np.empty(len(plaintexts) * self.slots_per_plaintext, np.int64)
        position = 0
        for plaintext in plaintexts:
            for _ in range(self.slots_per_plaintext):
                slot_sums[position] = plaintext & mask
                plaintext >>= self.slot_bits
                position += 1
            if plaintext:
                raise ValueError(
                    "plaintext has bits above its last slot; it was not packed with "
                    "this layout or the sum overflowed"
                )

        quantized_sums = slot_sums[:length] - num_parties * self.offset
        return quantized_sums.astype(np.float64) / self.scale
