"""``appliance selftest``: is this installation fit to hold private data?

Checks, in report order (see :data:`CHECKS`; append a ``(name, function)`` pair to extend it):

* **vault known answers**: fixed inputs through the vault's KDF and stream cipher must give
  fixed outputs (:func:`appliance.vault.selftest.known_answer_checks`);
* **round trips** through every stored format, in a private scratch folder: atomic files, the
  workspace layout, vault key slots and objects, the SQLite registry and its audit chain;
* **dependency versions** that matter for security (torch new enough for safe loading, ...),
  read from package metadata without importing the heavy libraries;
* **NVML**: GPUs readable, or a clean "no GPU" state (not a failure);
* **no egress**: inside this process, connections and name lookups to public addresses are
  refused by :mod:`appliance.offline`, while loopback is not.

A check reports ``pass``, ``fail`` or ``skip`` (only ``--core`` skips: a core install from a
reduced bundle has no training stack, and says so instead of pretending it was checked). A check
that raises is reported as failed; the self-test itself never crashes.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from appliance import offline

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class CheckResult:
    """One line of the report."""

    name: str
    status: Status
    detail: str


@dataclass(frozen=True)
class SelftestContext:
    """What every check gets: the mode and a private scratch folder (removed afterwards)."""

    core: bool
    scratch: Path


@dataclass(frozen=True)
class SelftestReport:
    """All results of one run."""

    core: bool
    results: list[CheckResult]

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self) -> bool:
        return self.count("fail") == 0 and bool(self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "core": self.core,
            "passed": self.count("pass"),
            "failed": self.count("fail"),
            "skipped": self.count("skip"),
            "checks": [asdict(r) for r in self.results],
        }


Check = Callable[[SelftestContext], Iterable[CheckResult]]


def _result(name: str, ok: bool, detail: str) -> CheckResult:
    return CheckResult(name, "pass" if ok else "fail", detail)


# --- vault --------------------------------------------------------------------------------------


def check_vault_known_answers(_ctx: SelftestContext) -> list[CheckResult]:
    """The vault's own known-answer tests; their absence is a failure, never a pass."""
    try:
        module = importlib.import_module("appliance.vault.selftest")
    except ModuleNotFoundError as exc:
        return [
            _result(
                "vault: known answers",
                False,
                f"absent ({exc}): the vault's cryptography cannot be checked; reinstall",
            )
        ]
    checks = list(module.known_answer_checks())
    if not checks:
        return [_result("vault: known answers", False, "the vault reported no checks")]
    results = []
    for name, ok, detail in checks:
        label = name if name.startswith("vault") else f"vault: {name}"
        results.append(_result(label, bool(ok), str(detail)))
    return results


# --- stored formats -----------------------------------------------------------------------------


def check_atomic_files(ctx: SelftestContext) -> list[CheckResult]:
    """Atomic writes: content and hash read back, mode 0600, a failed write changes nothing."""
    from appliance.fsutil import atomic_write_bytes, atomic_writer, sha256_file

    target = ctx.scratch / "atomic.bin"
    payload = os.urandom(3 * (1 << 20) + 123)  # crosses sha256_file's 1 MiB read size
    atomic_write_bytes(target, payload)
    same = target.read_bytes() == payload
    hashed = sha256_file(target) == hashlib.sha256(payload).hexdigest()
    private = (target.stat().st_mode & 0o777) == 0o600
    try:
        with atomic_writer(target) as handle:
            handle.write(b"partial")
            raise RuntimeError("interrupted on purpose")
    except RuntimeError:
        pass
    untouched = target.read_bytes() == payload
    leftovers = [p.name for p in ctx.scratch.iterdir() if p.name.endswith(".tmp")]
    ok = same and hashed and private and untouched and not leftovers
    detail = (
        "write, read back, sha256, mode 0600, interrupted write left the old content"
        if ok
        else f"content={same} sha256={hashed} mode0600={private} untouched={untouched} "
        f"leftovers={leftovers}"
    )
    return [_result("format: atomic files", ok, detail)]


def check_workspace(ctx: SelftestContext) -> list[CheckResult]:
    """A fresh workspace opens again with the same FORMAT and a private (0700) folder."""
    from appliance import workspace

    created, fresh = workspace.init(ctx.scratch / "ws")
    reopened = workspace.open_workspace(created.home)
    info = reopened.info()
    private = (created.home.stat().st_mode & 0o077) == 0
    ok = fresh and info.get("format") == workspace.FORMAT_VERSION and private
    detail = f"FORMAT v{info.get('format')}, mode {oct(created.home.stat().st_mode & 0o777)}"
    return [_result("format: workspace", ok, detail)]


def check_vault_roundtrip(ctx: SelftestContext) -> list[CheckResult]:
    """Key slot and encrypted object: written, unlocked, read back; wrong inputs refused."""
    from appliance import workspace
    from appliance.errors import IntegrityError, PassphraseError
    from appliance.vault import Vault, new_object_id

    ws, _ = workspace.init(ctx.scratch / "vault-ws")
    passphrase = "selftest " + os.urandom(8).hex()
    # target_s=0: the KDF at its minimum cost; the KAT above covers Argon2id itself.
    created = Vault.create(ws, passphrase, "selftest", target_s=0)
    opened = Vault.unlock(ws, passphrase)
    slot_ok = opened.master_key == created.master_key
    try:
        Vault.unlock(ws, passphrase + "x")
        wrong_refused = False
    except PassphraseError:
        wrong_refused = True
    results = [
        _result(
            "format: vault key slot",
            slot_ok and wrong_refused,
            "sealed, unlocked, wrong passphrase refused"
            if slot_ok and wrong_refused
            else f"unlock matches={slot_ok} wrong refused={wrong_refused}",
        )
    ]
    plain = os.urandom(2 * (1 << 20) + 77)
    object_id = new_object_id()
    path = ws.datasets_dir / "selftest.enc"
    opened.write(path, object_id, [plain[:1000], plain[1000:]])
    back = bytes(opened.read(path, object_id))
    no_plain_on_disk = plain[:64] not in path.read_bytes()
    try:
        opened.read(path, new_object_id())
        swap_refused = False
    except IntegrityError:
        swap_refused = True
    ok = back == plain and no_plain_on_disk and swap_refused
    results.append(
        _result(
            "format: vault object",
            ok,
            "2 MiB encrypted and read back; no plaintext in the file; wrong object id refused"
            if ok
            else f"round trip={back == plain} ciphertext only={no_plain_on_disk} "
            f"swap refused={swap_refused}",
        )
    )
    return results


def check_registry_roundtrip(ctx: SelftestContext) -> list[CheckResult]:
    """The SQLite registry: a row and a keyed audit row survive close/reopen and verify."""
    from appliance import workspace
    from appliance.registry import Registry

    ws, _ = workspace.init(ctx.scratch / "registry-ws")
    audit_key = os.urandom(32)
    digest = hashlib.sha256(b"selftest").hexdigest()
    manifest = {"selftest.gguf": digest}
    with Registry.open(ws, audit_key=audit_key) as reg:
        reg.models.add(
            "selftest-model",
            format="gguf",
            source="selftest",
            path="models/selftest-model",
            sha256=digest,
            manifest=manifest,
            architecture="llama",
            parameters=1,
            total_bytes=8,
        )
    with Registry.open(ws, audit_key=audit_key) as reg:
        row = reg.models.get("selftest-model")
        chain = reg.verify_audit()
        problems = reg.integrity_check()
    ok = (
        row.get("sha256") == digest
        and row.get("manifest") == manifest
        and chain.ok
        and chain.rows >= 1
        and not problems
    )
    detail = (
        f"row read back after reopen; audit chain of {chain.rows} row(s) verifies; "
        "integrity_check ok"
        if ok
        else f"row={row.get('sha256') == digest} chain={chain.problems} sqlite={problems}"
    )
    return [_result("format: registry", ok, detail)]


# --- dependencies -------------------------------------------------------------------------------

# (distribution, minimum version, why it matters, needed by a core install)
SECURITY_DEPENDENCIES: tuple[tuple[str, str, str, bool], ...] = (
    ("cryptography", "44", "Argon2id and AES-GCM of the vault", True),
    ("torch", "2.6", "torch.load refuses pickled code by default (weights_only)", False),
    ("transformers", "5.0", "local_files_only loading, no remote code by default", False),
    ("safetensors", "0.4", "weights without pickle", False),
)


def release_tuple(version: str) -> tuple[int, ...]:
    """The numeric release of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``."""
    match = re.match(r"\d+(?:\.\d+)*", version.strip())
    if not match:
        raise ValueError(f"unreadable version {version!r}")
    numbers = [int(n) for n in match.group(0).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def check_dependencies(ctx: SelftestContext) -> list[CheckResult]:
    """Versions of security-relevant libraries, from metadata (nothing heavy is imported)."""
    results = []
    for dist, minimum, why, core_needed in SECURITY_DEPENDENCIES:
        name = f"dependency: {dist} >= {minimum}"
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if ctx.core and not core_needed:
                results.append(
                    CheckResult(name, "skip", "not installed (core install: no training/export)")
                )
            else:
                results.append(_result(name, False, f"not installed ({why})"))
            continue
        ok = release_tuple(version) >= release_tuple(minimum)
        results.append(_result(name, ok, f"{version} ({why})"))
    return results


# --- GPU ----------------------------------------------------------------------------------------


def check_nvml(_ctx: SelftestContext) -> list[CheckResult]:
    """NVML answers, or reports a clean "no GPU" state; a missing nvidia-ml-py fails."""
    if importlib.util.find_spec("pynvml") is None:
        return [_result("nvml", False, "nvidia-ml-py is not installed: GPU readouts impossible")]
    from appliance.gpu import read_gpus

    state = read_gpus()
    if state.available:
        detail = f"{len(state.gpus)} GPU(s), driver {state.driver_version}: {state.summary()}"
    else:
        detail = f"no GPU (fine for CPU use): {state.unavailable_reason}"
    return [_result("nvml", True, detail)]


# --- no egress ----------------------------------------------------------------------------------

PUBLIC_PROBES: tuple[tuple[str, int], ...] = (("8.8.8.8", 53), ("2001:4860:4860::8888", 443))
"""Public addresses a connect is attempted to; the guard must refuse before any packet."""


def _blocked(action: Callable[[], object]) -> tuple[bool, str]:
    from appliance.errors import EgressBlockedError

    try:
        action()
    except EgressBlockedError as exc:
        return True, str(exc)
    except OSError as exc:
        return False, f"not stopped by the guard (the OS answered: {exc})"
    return False, "not stopped: the call went through"


def _connect(family: socket.AddressFamily, address: tuple[str, int]) -> None:
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        sock.connect(address)


def _sendto(address: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\0", address)


def _ipv6_sockets() -> bool:
    try:
        socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
    except OSError:
        return False
    return True


def check_no_egress(_ctx: SelftestContext) -> list[CheckResult]:
    """Public connects, datagrams and lookups are refused in-process; loopback is not."""
    offline.enforce()
    results = []
    v4, v6 = PUBLIC_PROBES
    probes: list[tuple[str, Callable[[], object]]] = [
        (f"no egress: TCP connect to {v4[0]}", lambda: _connect(socket.AF_INET, v4)),
        (f"no egress: UDP datagram to {v4[0]}", lambda: _sendto(v4)),
        (f"no egress: TCP connect to {v6[0]}", lambda: _connect(socket.AF_INET6, v6)),
        (
            "no egress: DNS lookup",
            lambda: socket.getaddrinfo("selftest.appliance.invalid", 443),
        ),
    ]
    for name, action in probes:
        if "::" in name and not _ipv6_sockets():
            results.append(CheckResult(name, "skip", "no IPv6 sockets on this machine"))
            continue
        ok, detail = _blocked(action)
        results.append(_result(name, ok, detail))
    loop_blocked, loop_detail = _blocked(lambda: _connect(socket.AF_INET, ("127.0.0.1", 9)))
    results.append(
        _result(
            "no egress: loopback still allowed",
            not loop_blocked,
            "the guard lets 127.0.0.1 through" if not loop_blocked else loop_detail,
        )
    )
    missing = [k for k, v in offline.OFFLINE_ENV.items() if os.environ.get(k) != v]
    results.append(
        _result(
            "no egress: offline environment",
            not missing,
            "HF_HUB_OFFLINE and the other no-telemetry variables are set"
            if not missing
            else f"not set: {', '.join(missing)}",
        )
    )
    return results


CHECKS: list[tuple[str, Check]] = [
    ("vault known answers", check_vault_known_answers),
    ("atomic files", check_atomic_files),
    ("workspace", check_workspace),
    ("vault round trip", check_vault_roundtrip),
    ("registry round trip", check_registry_roundtrip),
    ("dependencies", check_dependencies),
    ("nvml", check_nvml),
    ("no egress", check_no_egress),
]
"""Every check, in report order. A new stored format adds its round trip here."""


def run_selftest(
    *, core: bool = False, checks: list[tuple[str, Check]] | None = None
) -> SelftestReport:
    """Run ``checks`` (default :data:`CHECKS`) and collect every result; never raises."""
    results: list[CheckResult] = []
    with tempfile.TemporaryDirectory(prefix="appliance-selftest-") as tmp:
        for index, (name, check) in enumerate(checks if checks is not None else CHECKS):
            scratch = Path(tmp) / f"{index:02d}"
            scratch.mkdir(mode=0o700)
            try:
                found = list(check(SelftestContext(core=core, scratch=scratch)))
            except Exception as exc:  # a broken check is a failed check, not a crash
                found = [_result(name, False, f"raised {type(exc).__name__}: {exc}")]
            if not found:
                found = [_result(name, False, "the check reported nothing")]
            results.extend(found)
    return SelftestReport(core=core, results=results)
