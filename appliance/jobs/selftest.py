"""Job kinds that exercise the job mechanism itself (used by its tests; harmless to run).

``selftest-echo`` params: ``steps`` (progress events to send, default 3), ``delay_s`` between
them (default 0), ``fail`` (a message: fail with it), ``internal`` (raise a plain exception),
``noise`` (print this text on stdout as a library would: it lands on stderr), ``garbage`` (write
this text as a line of the event stream itself, as a foreign or torn write would), ``read_key``
(an object id whose key must have been handed over), ``commands`` (true: echo each command line
read from stdin as an output event until stdin closes), ``silent_s`` (sleep this long without
any event), ``no_return`` (pass the point of no return first: a cancel is then ignored).
"""

from __future__ import annotations

import time
from typing import Any

from appliance.cancel import point_of_no_return
from appliance.errors import ApplianceError
from appliance.jobs.child import JobContext


def echo(ctx: JobContext) -> dict[str, Any]:
    params = ctx.params
    if params.get("noise"):
        print(params["noise"])
    if params.get("garbage"):
        ctx._writer.stream.write(str(params["garbage"]) + "\n")
        ctx._writer.stream.flush()
    if params.get("no_return"):
        point_of_no_return()
    steps = int(params.get("steps", 3))
    for done in range(1, steps + 1):
        if params.get("delay_s"):
            time.sleep(float(params["delay_s"]))
        ctx.progress(done, steps, f"step {done}")
    if params.get("silent_s"):
        time.sleep(float(params["silent_s"]))
    if params.get("read_key"):
        ctx.keys.key(str(params["read_key"]), "the object asked for")
    if params.get("fail"):
        raise ApplianceError(str(params["fail"]))
    if params.get("internal"):
        raise RuntimeError("planted internal error")
    echoed = 0
    if params.get("commands"):
        while (command := ctx.next_command()) is not None:
            ctx.output(echo=command)
            echoed += 1
    return {"steps": steps, "echoed": echoed, "params": params}
