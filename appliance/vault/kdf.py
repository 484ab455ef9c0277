"""Passphrase to key: Argon2id with parameters calibrated per machine and capped when read.

A key slot stores the parameters it was made with. They are checked against fixed bounds
*before* Argon2id runs, because Argon2id allocates ``memory_kib`` at once: a doctored slot asking
for 1 TiB must be refused by arithmetic, not by the kernel's out-of-memory killer.
"""

from __future__ import annotations

import base64
import os
import time
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from appliance.errors import IntegrityError

MIN_MEMORY_KIB = 64 * 1024
"""64 MiB: the floor for every slot the product writes (above OWASP's 46 MiB option)."""
MIN_ITERATIONS = 3
MAX_MEMORY_KIB = 1024 * 1024
"""1 GiB: the most a slot may ask for; calibration stays well below it."""
MAX_ITERATIONS = 64
MAX_LANES = 16
MAX_WORK = 8 * MAX_MEMORY_KIB
"""Cap on memory x iterations (KiB passes): a few seconds of work on a slow machine at most."""
CALIBRATION_MAX_MEMORY_KIB = 256 * 1024
"""Calibration raises memory up to this first (memory hardness), then iterations."""
SALT_BYTES = 16
MAX_SALT_BYTES = 64
KEY_BYTES = 32
DEFAULT_TARGET_S = 0.5
"""How long deriving a key should take on this machine, chosen at ``init``."""


def default_lanes() -> int:
    """Argon2 lanes from the CPU count (1-8): more lanes let a many-core machine go wider."""
    return max(1, min(os.cpu_count() or 1, 8))


def normalize_passphrase(passphrase: str) -> bytes:
    """The bytes that enter the KDF: NFC-normalised UTF-8, so the same text typed through
    different input methods (composed or decomposed accents) gives the same key."""
    return unicodedata.normalize("NFC", passphrase).encode("utf-8")


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters of one key slot."""

    memory_kib: int
    """Memory cost in KiB (Argon2's ``m``)."""
    iterations: int
    """Passes over memory (Argon2's ``t``)."""
    lanes: int
    """Parallelism (Argon2's ``p``)."""
    salt: bytes
    """Random per slot, so equal passphrases of two people give different keys."""

    def derive(self, passphrase: str) -> bytes:
        """The 32-byte key for ``passphrase`` (takes about the calibrated time)."""
        check_bounds(self.memory_kib, self.iterations, self.lanes, len(self.salt), "key slot")
        kdf = Argon2id(
            salt=self.salt,
            length=KEY_BYTES,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        )
        return kdf.derive(normalize_passphrase(passphrase))

    def to_json(self) -> dict[str, Any]:
        """The slot-file form."""
        return {
            "name": "argon2id",
            "memory_kib": self.memory_kib,
            "iterations": self.iterations,
            "lanes": self.lanes,
            "salt": base64.b64encode(self.salt).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> KdfParams:
        """Parse and bound-check parameters read from a slot, allocating nothing.

        Raises:
            IntegrityError: a field is missing, of the wrong type or out of bounds.
        """
        if not isinstance(data, Mapping) or data.get("name") != "argon2id":
            raise IntegrityError(f"{where} is damaged: its KDF is not argon2id")
        values: dict[str, int] = {}
        for field in ("memory_kib", "iterations", "lanes"):
            value = data.get(field)
            # bool is an int in Python; a slot saying "iterations": true is damaged.
            if not isinstance(value, int) or isinstance(value, bool):
                raise IntegrityError(f"{where} is damaged: KDF field {field} is not an integer")
            values[field] = value
        salt_text = data.get("salt")
        try:
            if not isinstance(salt_text, str):
                raise ValueError
            salt = base64.b64decode(salt_text.encode("ascii"), validate=True)
        except ValueError:
            raise IntegrityError(f"{where} is damaged: KDF salt is not base64") from None
        check_bounds(values["memory_kib"], values["iterations"], values["lanes"], len(salt), where)
        return cls(values["memory_kib"], values["iterations"], values["lanes"], salt)


def check_bounds(memory_kib: int, iterations: int, lanes: int, salt_len: int, where: str) -> None:
    """Refuse parameters outside the product's bounds, before any memory is allocated.

    Raises:
        IntegrityError: naming the parameter; too small means a weakened slot, too large a
            slot that would exhaust the machine.
    """
    problems = []
    if not MIN_MEMORY_KIB <= memory_kib <= MAX_MEMORY_KIB:
        problems.append(f"memory {memory_kib} KiB outside {MIN_MEMORY_KIB}-{MAX_MEMORY_KIB}")
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        problems.append(f"iterations {iterations} outside {MIN_ITERATIONS}-{MAX_ITERATIONS}")
    if not 1 <= lanes <= MAX_LANES:
        problems.append(f"lanes {lanes} outside 1-{MAX_LANES}")
    if not problems and memory_kib * iterations > MAX_WORK:
        problems.append(f"memory x iterations {memory_kib * iterations} over {MAX_WORK}")
    if not SALT_BYTES <= salt_len <= MAX_SALT_BYTES:
        problems.append(f"salt of {salt_len} bytes outside {SALT_BYTES}-{MAX_SALT_BYTES}")
    if problems:
        raise IntegrityError(
            f"{where} has KDF parameters this appliance refuses ({'; '.join(problems)}); it is "
            "damaged or was modified: restore the keys folder from backup or use another slot"
        )


def calibrate(
    target_s: float = DEFAULT_TARGET_S,
    *,
    lanes: int | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> KdfParams:
    """Parameters that take about ``target_s`` here, never below the minimums.

    One derivation at the minimum parameters is timed; cost grows linearly with memory and
    with iterations, so the rest is arithmetic. Memory is raised first (up to 256 MiB),
    because memory is what makes guessing on GPUs expensive, then iterations.

    Args:
        target_s: seconds one unlock should take; 0 or less gives the minimum parameters
            (tests use that; the product default is 0.5 s).
        lanes: Argon2 lanes; from the CPU count when None.
        clock: a monotonic clock (injected by tests).
    """
    lanes = default_lanes() if lanes is None else lanes
    salt = os.urandom(SALT_BYTES)
    base = KdfParams(MIN_MEMORY_KIB, MIN_ITERATIONS, lanes, salt)
    if target_s <= 0:
        return base
    start = clock()
    base.derive("calibration")
    elapsed = max(clock() - start, 1e-6)
    factor = target_s / elapsed
    if factor <= 1:
        return base
    memory_factor = min(factor, CALIBRATION_MAX_MEMORY_KIB / MIN_MEMORY_KIB)
    # Whole MiB, so slots read cleanly.
    memory_kib = int(MIN_MEMORY_KIB * memory_factor) // 1024 * 1024
    iterations = round(MIN_ITERATIONS * factor * MIN_MEMORY_KIB / memory_kib)
    iterations = max(MIN_ITERATIONS, min(iterations, MAX_ITERATIONS, MAX_WORK // memory_kib))
    return KdfParams(memory_kib, iterations, lanes, salt)
