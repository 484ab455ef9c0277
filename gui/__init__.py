"""The desktop app: PySide6 views over the ``appliance`` core.

The GUI process never loads torch, transformers, peft or bitsandbytes (a test enforces it): heavy
work runs in child processes (:mod:`gui.process`), and GPU state is read through NVML only.
"""
