"""The no-egress guard refuses every address off this machine, before any packet leaves."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap

import pytest

from appliance import offline
from appliance.errors import EgressBlockedError


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "127.0.0.1",
        "127.8.9.10",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
        None,
        b"localhost",
    ],
)
def test_loopback_hosts_are_allowed(host: object) -> None:
    assert offline.is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "8.8.8.8",
        "huggingface.co",
        "10.0.0.1",
        "192.168.1.1",
        "::ffff:8.8.8.8",
        "2001:db8::1",
        "",
        42,
    ],
)
def test_other_hosts_are_refused(host: object) -> None:
    assert not offline.is_loopback_host(host)


def test_enforce_sets_offline_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in offline.OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    offline.enforce()
    assert offline.is_enforced()
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DO_NOT_TRACK"):
        assert offline.OFFLINE_ENV[key] == __import__("os").environ[key]


@pytest.mark.enable_socket
def test_connect_to_public_address_is_refused_in_process() -> None:
    # conftest enforced the guard for this process; pytest-socket is lifted for this test so
    # that only our audit hook stands between the call and the network.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        with pytest.raises(EgressBlockedError, match=r"203\.0\.113\.7"):
            sock.connect(("203.0.113.7", 443))


@pytest.mark.enable_socket
def test_name_lookup_is_refused_in_process() -> None:
    with pytest.raises(EgressBlockedError, match=r"huggingface\.co"):
        socket.getaddrinfo("huggingface.co", 443)


@pytest.mark.enable_socket
def test_udp_datagram_to_public_address_is_refused() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        pytest.raises(EgressBlockedError, match=r"9\.9\.9\.9"),
    ):
        sock.sendto(b"x", ("9.9.9.9", 53))


@pytest.mark.enable_socket
def test_loopback_connection_still_works() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            conn, _ = server.accept()
            client.sendall(b"ping")
            assert conn.recv(4) == b"ping"
            conn.close()


def test_guard_refuses_in_a_fresh_process_with_a_clear_message() -> None:
    result = _run(
        """
        import socket, urllib.request
        from appliance import offline
        from appliance.errors import EgressBlockedError
        offline.enforce()
        try:
            urllib.request.urlopen("http://example.com/", timeout=2)
        except EgressBlockedError as exc:  # any other outcome fails the child
            print("refused:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused: network access blocked")
    assert "'example.com'" in result.stdout


def test_hf_hub_is_switched_offline_even_if_imported_first() -> None:
    result = _run(
        """
        import huggingface_hub.constants as c
        from appliance import offline
        offline.enforce()
        print(c.HF_HUB_OFFLINE)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"


def test_hub_kernel_fallback_lines_are_not_shown(caplog: pytest.LogCaptureFixture) -> None:
    """bitsandbytes on AVX-512 bf16 CPUs logs a refused Hub kernel fetch at every import."""
    offline.enforce()
    offline.enforce()  # idempotent: one filter
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    hub = logging.getLogger("kernels._internals.hf_hub")
    assert len(bnb.filters) == len(hub.filters) == 1
    with caplog.at_level(logging.WARNING):
        bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: offline")
        hub.warning("Skipping publisher trust check for 'x/y' because Hugging Face Hub is offline")
        bnb.warning("some other fallback")
    assert [r.getMessage() for r in caplog.records] == ["some other fallback"]
