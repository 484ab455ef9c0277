"""Training: configuration, pre-flight memory estimate, the event stream, the child and its parent.

Importing this package is cheap on purpose (no torch, no transformers): the CLI and the GUI read
configs, estimates and events without loading the deep-learning stack. ``launcher`` (the
parent side) and ``runfolder`` do not import torch either; ``quant``, ``data``, ``checkpoint``,
``loop`` and the worker (the child side) do.
"""

from __future__ import annotations
