"""Evaluation: score adapter versions against their base on a dataset version, and gate the
``production`` tag on a golden set.

- :mod:`.metrics`: what is measured (answer loss, perplexity, exact match, contains) and the
  settings; torch-free.
- :mod:`.request`: the parent side of an ``eval`` job, and the dataset checks; torch-free.
- :mod:`.gate`: golden sets and the promotion gate; torch-free.
- :mod:`.scoring`: scoring rows with a loaded model (torch, in the child).
- :mod:`.job`: the ``eval`` job kind's handler (in the child; stores the results).
"""

from __future__ import annotations
