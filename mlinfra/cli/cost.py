"""What the deployed stack has cost so far, per node, region and environment: `mlinfra cost`."""

from __future__ import annotations

from mlinfra.cli.common import DEFAULT_FILE, EnvOpt, FileOpt, JsonOpt, app, load


@app.command()
def cost(file: FileOpt = DEFAULT_FILE, env: EnvOpt = None, as_json: JsonOpt = False):
    """Each node's running time, hourly rate, cost so far and projected month; totals per region and stack."""
    from mlinfra.ops.cost import spent

    result = spent(load(file, env))
    from mlinfra.console import out, print_json

    if as_json:
        return print_json(result)
    for line in spend_lines(result):
        out.print(line, markup=False)


def spend_lines(result) -> list[str]:
    """Aligned columns per node, a line per region (and environment), the stack's total, then the
    sources and dates of the prices and what is not counted."""
    from mlinfra.ops.cost import duration

    def money(value, digits=2) -> str:
        return "unknown" if value is None else f"${value:,.{digits}f}"

    rows = [("node", "region", "machine type", "running", "$/hour", "so far", "month")]
    for n in result.nodes:
        running = "unknown" if n.running_h is None else duration(n.running_h)
        rows.append(
            (
                n.name,
                n.region,
                n.machine_type or "-",
                running,
                money(n.usd_per_hour, 3),
                money(n.usd_so_far),
                money(n.usd_per_month, 0),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    prices = "no prices" if result.model == "none" else f"{result.model} prices"
    lines = [f"Stack {result.stack!r} ({result.target}), {prices}, at {result.at}:"]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    for group in result.groups:
        where = group.region + (f" ({group.environment})" if group.environment else "")
        lines.append(
            f"{where}: {group.nodes} node(s), {money(group.usd_per_hour, 3)}/hour, {money(group.usd_so_far)} so far, "
            f"{money(group.usd_per_month, 0)}/month"
        )
    lines.append(
        f"Total: {money(result.usd_per_hour, 3)}/hour, {money(result.usd_so_far)} so far, "
        f"{money(result.usd_per_month, 0)}/month"
    )
    lines += [f"  unknown: {reason}" for reason in result.unknown]
    lines += [f"  prices: {source}" for source in result.sources]
    lines += [f"  note: {note}" for note in result.notes]
    return lines
