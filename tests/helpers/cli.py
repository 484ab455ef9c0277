"""Run the real ``appliance`` command in a child process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


@dataclass
class CliRunner:
    """``cli("init")`` runs ``python -m appliance --home HOME init``."""

    home: Path

    def __call__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        input: str | None = None,
        home: bool = True,
        timeout: float = 300,
    ) -> CliResult:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
        full_env.update(env or {})
        argv = [sys.executable, "-m", "appliance"]
        if home:
            argv += ["--home", str(self.home)]
        proc = subprocess.run(
            [*argv, *args],
            env=full_env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)
