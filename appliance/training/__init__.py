"""Training: configuration, pre-flight memory estimate, the event stream, the child and its parent.

Where "a run" lives, by side:

* the parent (CLI, desktop app), torch-free: :mod:`.runs` is the one door (create, launch,
  stop, settle, reconcile); :mod:`.runfolder` the run's folder and its one description
  (``meta.json``); :mod:`.process` the child process as the parent sees it; :mod:`.progress`
  the view-model every view renders (:class:`~.progress.RunProgress`); :mod:`.preflight` the
  memory verdict shown before a launch; :mod:`.config` / :mod:`.settings` the settings;
  :mod:`.events` the JSON-lines contract between child and parent; :mod:`.estimate` the figures.
* the child (``python -m appliance.training.worker RUN_DIR``), with torch: :mod:`.worker`
  (entry point, keys, failures), :mod:`.loop` (the Trainer), :mod:`.data`, :mod:`.checkpoint`,
  :mod:`.quant`, :mod:`.memory`. It never loads the registry.

Importing this package is cheap on purpose (no torch, no transformers): the CLI and the GUI read
configs, estimates and events without loading the deep-learning stack.
"""

from __future__ import annotations
