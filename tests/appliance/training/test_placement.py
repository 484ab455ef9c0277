"""Where a run trains: device selection, the split of micro-batches, the network allow-list,
the failure verdict of torchrun's agent and the per-device estimate. No processes started."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import pytest

from appliance import netpolicy, offline, workspace
from appliance.errors import EgressBlockedError, UsageError
from appliance.gpu import GpuReading, GpuState
from appliance.registry import Registry
from appliance.training.agent import RankFailure, describe_rank_failure, root_cause
from appliance.training.device_estimate import per_device
from appliance.training.distributed import Group
from appliance.training.estimate import estimate_memory
from appliance.training.parallel import share_batches
from appliance.training.placement import (
    Placement,
    Topology,
    check_batch_division,
    describe_global_batch,
    preferred_gpus,
    resolve_topology,
)
from appliance.training.preflight import check
from appliance.training.settings import build_config
from tests.appliance.training.test_estimate import LLAMA3_8B

GB = 10**9
NO_GPU = GpuState(unavailable_reason="NVML Shared Library Not Found")


def _gpus(*free: int, total: int = 80 * GB) -> GpuState:
    return GpuState(
        gpus=[
            GpuReading(i, "NVIDIA A100", total - f, total, None, None) for i, f in enumerate(free)
        ]
    )


# --- choosing devices ------------------------------------------------------------------------


def test_default_is_every_gpu_or_one_cpu_process() -> None:
    both = resolve_topology(Placement(), _gpus(70 * GB, 70 * GB))
    assert (both.nproc_per_node, both.device, both.backend) == (2, "cuda", "nccl")
    assert both.gpu_indices == (0, 1)
    assert both.device_names == ("NVIDIA A100", "NVIDIA A100")
    assert both.distributed
    alone = resolve_topology(Placement(), NO_GPU)
    assert (alone.nproc_per_node, alone.device, alone.distributed) == (1, "cpu", False)


def test_chosen_gpus_cpu_processes_and_none() -> None:
    gpus = _gpus(1, 2, 3)
    assert resolve_topology(Placement(gpus="2,0"), gpus).gpu_indices == (0, 2)
    cpu = resolve_topology(Placement(processes=2), gpus)
    assert (cpu.device, cpu.backend, cpu.world_size, cpu.device_names) == (
        "cpu",
        "gloo",
        2,
        ("cpu", "cpu"),
    )
    assert resolve_topology(Placement(gpus="none"), gpus).device == "cpu"
    assert "2 processes on the CPU, gloo" in cpu.describe()


def test_the_workspace_setting_gives_the_default_gpus() -> None:
    two = _gpus(1, 1)
    assert preferred_gpus(None, two, where="s.json") == "all"
    assert preferred_gpus(None, NO_GPU, where="s.json") == "all"  # all: the CPU when none
    assert preferred_gpus((), two, where="s.json") == "none"
    assert preferred_gpus((1, 0), two, where="s.json") == "0,1"
    assert resolve_topology(
        Placement(gpus=preferred_gpus((1,), two, where="s.json")), two
    ).gpu_indices == (1,)
    with pytest.raises(UsageError) as missing:
        preferred_gpus((0, 7), two, where="/ws/settings.json")
    assert str(missing.value) == (
        "the workspace allows training on GPU 0, 7 (/ws/settings.json), but this machine has no "
        "GPU 7 (NVML sees GPU 0, 1); tick the GPUs of this machine on the Settings page, or "
        "choose with --gpus"
    )
    with pytest.raises(UsageError, match=r"no NVIDIA GPU on this machine.*--gpus none"):
        preferred_gpus((0,), NO_GPU, where="s.json")


@pytest.mark.parametrize(
    ("placement", "gpus", "parallel", "words"),
    [
        (Placement(gpus="7"), "two", "ddp", ["no GPU 7", "GPU 0, 1"]),
        (Placement(gpus="7"), "none", "ddp", ["no NVIDIA GPU", "--gpus none"]),
        (Placement(gpus="0,0"), "two", "ddp", ["twice"]),
        (Placement(gpus="first"), "two", "ddp", ["all, none, or GPU indices"]),
        (Placement(processes=0), "none", "ddp", ["--processes 0", "at least 1"]),
        (Placement(processes=2, gpus="0"), "two", "ddp", ["cannot be combined"]),
        (Placement(processes=2), "none", "fsdp", ["parallel=fsdp", "does not run on the CPU"]),
        (Placement(gpus="none"), "two", "fsdp", ["parallel=fsdp"]),
        (Placement(nnodes=2), "none", "ddp", ["--rendezvous HOST:PORT"]),
        (Placement(nnodes=2, node_rank=2, rendezvous="a:1"), "none", "ddp", ["0 to 1"]),
        (Placement(rendezvous="10.0.0.5:29500"), "none", "ddp", ["--nnodes N"]),
        (Placement(nnodes=2, rendezvous="10.0.0.5"), "none", "ddp", ["HOST:PORT"]),
        (Placement(nnodes=2, rendezvous="10.0.0.5:70000"), "none", "ddp", ["1 to 65535"]),
    ],
)
def test_refusals_say_what_to_change(
    placement: Placement, gpus: str, parallel: str, words: list[str]
) -> None:
    state = _gpus(1, 1) if gpus == "two" else NO_GPU
    with pytest.raises(UsageError) as refused:
        resolve_topology(placement, state, parallel=parallel)
    for word in words:
        assert word in str(refused.value)


def test_several_machines_and_the_topology_round_trip() -> None:
    placement = Placement(processes=2, nnodes=3, node_rank=1, rendezvous="[FD00::1]:29500")
    topology = resolve_topology(placement, NO_GPU)
    assert topology.world_size == 6
    assert topology.rendezvous == "[FD00::1]:29500"
    assert Topology.from_dict(topology.to_dict()) == topology
    assert Placement.from_dict(placement.to_dict()) == placement
    assert netpolicy.parse_rendezvous("[fd00::1]:29500") == ("fd00::1", 29500)
    assert netpolicy.parse_rendezvous("node0.cluster:1") == ("node0.cluster", 1)
    assert "node 1 of 3, 6 processes in all" in topology.describe()


def test_global_batch_and_the_split_of_micro_batches() -> None:
    assert describe_global_batch(2, 4, 2) == (
        "Global batch: 16 sequences a step = micro-batch 2 x accumulation 4 x 2 processes"
    )
    check_batch_division(19, 2, 2)  # 19 = 4 x 4 + 3: the last global micro-batch splits 2 + 1
    check_batch_division(20, 2, 2)
    check_batch_division(5, 7, 1)  # one process takes any split
    with pytest.raises(UsageError) as refused:
        check_batch_division(19, 3, 2)  # 19 = 3 x 6 + 1: one process would get nothing
    assert "do not divide across 2 processes" in str(refused.value)
    assert "micro_batch_size=" in str(refused.value)
    with pytest.raises(UsageError):
        check_batch_division(1, 1, 2)


def test_shares_of_a_global_micro_batch_cover_it_once_in_order() -> None:
    items = list(range(7))
    shares = [Group(rank=r, world_size=3).share(items) for r in range(3)]
    assert shares == [[0, 1], [2, 3], [4, 5, 6]]
    # A resumed run on one process where two trained: the same examples, in pieces of the
    # micro-batch, so memory stays that of one micro-batch.
    alone = share_batches([[0, 1, 2, 3], [4, 5, 6, 7]], Group(), micro_batch_size=2)
    assert alone == [[0, 1], [2, 3], [4, 5], [6, 7]]
    second = share_batches([[0, 1, 2, 3], [4, 5, 6]], Group(rank=1, world_size=2), 2)
    assert second == [[2, 3], [5, 6]]


# --- the network allow-list -------------------------------------------------------------------


def test_allow_list_is_empty_by_default_and_every_change_is_audited(tmp_path: Path) -> None:
    ws, _ = workspace.init(tmp_path / "ws")
    assert netpolicy.load(ws) == []
    assert netpolicy.check_rendezvous(ws, "127.0.0.1:29500") is None  # loopback needs no entry
    with pytest.raises(netpolicy.NetworkPolicyError) as refused:
        netpolicy.check_rendezvous(ws, "10.0.0.5:29500")
    message = str(refused.value)
    assert "not on the workspace's network allow-list (empty" in message
    assert "appliance network allow 10.0.0.5:29500" in message
    with Registry.open(ws) as reg:
        assert netpolicy.add(ws, reg, "10.0.0.5:29500") == "10.0.0.5:29500"
        assert netpolicy.check_rendezvous(ws, "10.0.0.5:29500") == "10.0.0.5:29500"
        with pytest.raises(netpolicy.NetworkPolicyError):
            netpolicy.check_rendezvous(ws, "10.0.0.5:29501")  # exactly that port
        netpolicy.remove(ws, reg, "10.0.0.5:29500")
        with pytest.raises(UsageError):
            netpolicy.remove(ws, reg, "10.0.0.5:29500")
        rows = [(r["action"], r["object"]) for r in reg.audit_rows(action="network")]
    assert rows == [("network.allow", "10.0.0.5:29500"), ("network.revoke", "10.0.0.5:29500")]
    assert netpolicy.load(ws) == []


class _Inet:
    family = socket.AF_INET


def test_the_guard_admits_exactly_the_allowed_address(monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the audit hook itself (no packet is sent): the conftest enforced the guard.
    monkeypatch.setattr(offline, "_allowed", set())
    with pytest.raises(EgressBlockedError):
        sys.audit("socket.connect", _Inet(), ("192.0.2.10", 29500))
    offline.allow("192.0.2.10", 29500)
    sys.audit("socket.connect", _Inet(), ("192.0.2.10", 29500))
    sys.audit("socket.getaddrinfo", "192.0.2.10", 29500, 0, 0, 0, 0)
    for other in (("192.0.2.10", 29501), ("192.0.2.11", 29500)):
        with pytest.raises(EgressBlockedError):
            sys.audit("socket.connect", _Inet(), other)
    with pytest.raises(EgressBlockedError):
        sys.audit("socket.getaddrinfo", "huggingface.co", 443, 0, 0, 0, 0)
    assert offline.allowed() == ["192.0.2.10:29500"]


# --- torchrun's agent: which rank's failure ended the run -------------------------------------


def test_the_killed_rank_is_the_cause_not_the_ranks_that_lost_it() -> None:
    killed = RankFailure(rank=1, pid=11, exitcode=-signal.SIGKILL, time=10.0)
    lost = RankFailure(rank=0, pid=10, exitcode=1, message="lost", peer=True, time=9.0)
    stopped = RankFailure(rank=2, pid=12, exitcode=-signal.SIGTERM, time=8.0)
    assert root_cause([lost, stopped, killed]) == killed
    text = describe_rank_failure(killed, 3)
    assert text.startswith("rank 1 of 3 (pid 11) was killed by SIGKILL")
    assert "'appliance run resume'" in text
    oom = RankFailure(rank=2, pid=12, exitcode=1, message="the computer ran out of memory")
    assert root_cause([lost, oom]) == oom
    assert describe_rank_failure(oom, 4).startswith(
        "rank 2 of 4 (pid 12): the computer ran out of memory"
    )


# --- the estimate per device ------------------------------------------------------------------


def test_ddp_adds_buckets_and_fsdp_shards_the_base() -> None:
    config = build_config("balanced", ["max_seq_length=2048", "micro_batch_size=1"])
    single = estimate_memory(LLAMA3_8B, config, device="cuda")
    assert per_device(single, LLAMA3_8B, config, 1, "ddp") == single
    ddp = per_device(single, LLAMA3_8B, config, 2, "ddp")
    lora = single.item("lora").bytes
    assert ddp.total_bytes == single.total_bytes + lora // 4
    fsdp = per_device(single, LLAMA3_8B, config, 4, "fsdp")
    assert fsdp.item("weights").bytes == -(-single.item("weights").bytes // 4)
    assert fsdp.item("activations").bytes == single.item("activations").bytes
    gather = fsdp.item("fsdp_gather").bytes
    assert 0 < gather < single.item("weights").bytes / 8  # two of 32 layers, 4-bit
    assert fsdp.total_bytes < single.total_bytes


def test_preflight_sets_each_selected_gpu_against_the_per_process_figure() -> None:
    config = build_config("balanced", ["max_seq_length=2048", "micro_batch_size=1"])
    gpus = _gpus(70 * GB, 6 * GB, 70 * GB)
    topology = resolve_topology(Placement(gpus="0,1"), gpus)
    verdict = check(LLAMA3_8B, config, gpus=gpus, topology=topology)
    # 8.2 GiB a process (chunked loss, 16-bit frozen weights, DDP buckets); GPU 1 has 6 GB free.
    assert verdict.fits is False
    assert verdict.free_bytes == 6 * GB
    lines = "\n".join(verdict.lines)
    assert "GPU 0 (NVIDIA A100): 65.2 GiB free: fits" in lines
    assert "GPU 1 (NVIDIA A100): 5.6 GiB free: 2.6 GiB short" in lines
    assert "Per process (DDP):" in lines
    assert "GPU 2" not in lines
    cpu = resolve_topology(Placement(processes=2), NO_GPU)
    verdict = check(LLAMA3_8B, config, gpus=NO_GPU, ram_free=10**12, topology=cpu)
    assert verdict.estimate is not None
    assert any(line.startswith("2 processes x") for line in verdict.lines)


def test_the_per_process_estimate_is_sized_from_the_data() -> None:
    """Each process forms micro-batches of micro_batch_size from its share: the per-process
    figure takes the data's lengths as one process's estimate does."""
    config = build_config("balanced", ["max_seq_length=2048", "micro_batch_size=2"])
    lengths = [50, 57, 64, 61, 55, 40]
    gpus = _gpus(70 * GB, 70 * GB)
    topology = resolve_topology(Placement(gpus="0,1"), gpus)
    sized = check(LLAMA3_8B, config, gpus=gpus, topology=topology, lengths=lengths)
    blind = check(LLAMA3_8B, config, gpus=gpus, topology=topology)
    assert sized.estimate is not None
    assert blind.estimate is not None
    assert sized.estimate.tokens == 2 * 64  # not the global micro-batch of 4
    assert blind.estimate.tokens == 2 * 2048
    single = estimate_memory(LLAMA3_8B, config, device="cuda", lengths=lengths)
    assert sized.estimate == per_device(single, LLAMA3_8B, config, 2, "ddp")
