"""The SQLite registry: base models, dataset versions, runs, adapter versions, exports, tags, audit.

One file, ``HOME/registry.sqlite``, in WAL mode with ``synchronous=FULL`` and foreign keys on;
every write is one transaction, so a crash leaves the old or the new state. It is an index: the
model, run and adapter folders carry their own ``meta.json`` and ``appliance verify
--rebuild-index`` rebuilds the rows from them.

Typical use::

    with Registry.open(ws) as reg:
        version = reg.add_adapter_version("contracts", run_id=run_id, move_from=tmp_folder, ...)
        reg.set_tag(f"contracts@{version}", "production")
        print(reg.adapter_lineage("contracts@production"))
"""

from __future__ import annotations

from appliance.registry.audit import ChainReport
from appliance.registry.evaluations import EvaluationsMixin
from appliance.registry.refs import Ref, parse_ref
from appliance.registry.schema import MIGRATIONS, RUN_STATES, SCHEMA_VERSION


class Registry(EvaluationsMixin):
    """The workspace's registry. Open it with :meth:`Registry.open`; close it (or use ``with``).

    Methods by subject: connection and audit (:mod:`appliance.registry.core`), base models,
    dataset versions and runs (:mod:`appliance.registry.records`), adapter versions, tags,
    exports and lineage (:mod:`appliance.registry.adapters`), evaluation results and golden
    sets (:mod:`appliance.registry.evaluations`).
    """


__all__ = [
    "MIGRATIONS",
    "RUN_STATES",
    "SCHEMA_VERSION",
    "ChainReport",
    "Ref",
    "Registry",
    "parse_ref",
]
