"""``appliance network show|allow|revoke``: the addresses off this machine a run may reach.

Empty by default: the appliance reaches nothing beyond loopback. A run over several machines
needs its rendezvous address on the list (docs/cluster.md). Every change is an audit row.
"""

from __future__ import annotations

import typer

from appliance import netpolicy
from appliance.cli.context import out, print_json, state

network_app = typer.Typer(
    name="network",
    help="The network allow-list: addresses off this machine a run may reach (empty: none).",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add this module's verbs to the ``appliance`` command."""
    app.add_typer(network_app)


@network_app.command("show")
def show(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array."),
) -> None:
    """Show the allow-list."""
    entries = netpolicy.load(state(ctx).workspace())
    if json_out:
        print_json(entries)
    else:
        out.print(netpolicy.allow_list_line(entries), markup=False)


@network_app.command("allow")
def allow(
    ctx: typer.Context,
    address: str = typer.Argument(..., help="HOST:PORT, e.g. 10.0.0.5:29500 (exactly that)."),
) -> None:
    """Admit exactly HOST:PORT (the rendezvous of a run over several machines); audited."""
    value = netpolicy.normalise_entry(address)
    st = state(ctx)
    ws = st.workspace()
    with st.registry(ws) as reg:
        netpolicy.add(ws, reg, value)
    out.print(f"Allowed {value}. {netpolicy.allow_list_line(netpolicy.load(ws))}", markup=False)


@network_app.command("revoke")
def revoke(
    ctx: typer.Context,
    address: str = typer.Argument(..., help="HOST:PORT on the list."),
) -> None:
    """Take HOST:PORT off the allow-list; audited."""
    value = netpolicy.normalise_entry(address)
    st = state(ctx)
    ws = st.workspace()
    with st.registry(ws) as reg:
        netpolicy.remove(ws, reg, value)
    out.print(f"Revoked {value}. {netpolicy.allow_list_line(netpolicy.load(ws))}", markup=False)
