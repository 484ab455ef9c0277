"""``appliance-gui``: start the desktop app on a workspace."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from appliance import offline

NO_DISPLAY_MESSAGE = (
    "appliance-gui: no display found (neither DISPLAY nor WAYLAND_DISPLAY is set).\n"
    "Run it in a desktop session, or on a headless machine under a virtual screen:\n"
    "    xvfb-run -a appliance-gui\n"
    "The same work is available without a display through the `appliance` command."
)


def has_display(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether Qt can open a window here (a display server, or a headless platform asked for)."""
    platform = env.get("QT_QPA_PLATFORM", "")
    if platform.startswith(("offscreen", "minimal", "vnc", "eglfs", "linuxfb")):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


SWITCH_INTERVAL_S = 0.001
"""How long a thread holds the interpreter lock while another waits for it (Python's default is
5 ms): a task replaying a long run on a thread then delays the GUI thread by 1 ms at a time."""


def share_interpreter() -> None:
    """Let the GUI thread take the interpreter lock from busy tasks sooner."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)


def main(argv: list[str] | None = None) -> None:
    offline.enforce()
    parser = argparse.ArgumentParser(prog="appliance-gui", description="Start the desktop app.")
    parser.add_argument("--home", type=Path, help="workspace folder (default: APPLIANCE_HOME)")
    args = parser.parse_args(argv)
    if not has_display():
        sys.stderr.write(NO_DISPLAY_MESSAGE + "\n")
        sys.exit(1)

    from appliance.errors import ApplianceError
    from appliance.workspace import init, open_workspace, resolve_home

    try:
        home = resolve_home(args.home)
        init(home)
    except ApplianceError as exc:
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(exc.exit_code)

    from PySide6.QtWidgets import QApplication, QDialog

    from appliance.unlocked import UnlockedWorkspace
    from appliance.vault import has_vault
    from gui.main_window import MainWindow
    from gui.widgets.passphrase_dialog import PassphraseDialog
    from gui.widgets.second_slot import SecondSlotOffer

    share_interpreter()
    app = QApplication(sys.argv[:1])
    app.setApplicationName("Fine-tuning appliance")
    ws = open_workspace(home)
    dialog = PassphraseDialog(ws, create=not has_vault(ws))
    if dialog.exec() != QDialog.DialogCode.Accepted or dialog.vault is None:
        sys.exit(0)
    if dialog.creating:
        SecondSlotOffer(dialog.vault).exec()  # "Not now" is fine: Settings can add one later
    window = MainWindow(home, workspace=UnlockedWorkspace(dialog.vault))
    window.monitor.start()
    window.show()
    window.settle_runs()
    window.ensure_demo_model()
    code = app.exec()
    window.monitor.stop()
    sys.exit(code)


if __name__ == "__main__":
    main()
