"""``faas-llm activation list|get|result|logs|poll`` (``wsk activation`` conventions)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import click

from cli._client import client_options, echo_json, echo_table, json_option, make_client
from faas_llm.client import Client
from faas_llm.errors import RequestError
from faas_llm.types import ActivationRecord, LoadTier, now_ms


@click.group()
def activation() -> None:
    """Activations: the records of invocations (timings, result, logs)."""


def _pick(wsk: Client, activation_id: str | None, last: bool) -> str:
    if activation_id and last:
        raise RequestError("give an activation ID or --last, not both")
    if activation_id:
        return activation_id
    if last:
        return wsk.last_activation_id()
    raise RequestError("give an activation ID or --last")


def _id_options(func: click.decorators.FC) -> click.decorators.FC:
    func = click.option("--last", "-l", is_flag=True, help="The most recent activation.")(func)
    return click.argument("activation_id", required=False, metavar="[ID]")(func)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def start_kind(r: ActivationRecord) -> str:
    """``cold`` / ``warm``, or ``-`` for an activation that never reached a runtime (failed init, timeout)."""
    if r.coldStart:
        return "cold"
    return "warm" if r.loadTier is LoadTier.WARM else "-"


def timing_row(r: ActivationRecord) -> list[str]:
    """The columns of one activation in `list` and in the cold/warm comparison."""
    return [
        r.activationId, r.name, _when(r.start), start_kind(r), r.loadTier.value if r.loadTier
        else "", str(r.duration), _seconds(r.loadTime), _seconds(r.timeToFirstToken), r.node or "",
        r.response.status,
    ]


TIMING_HEADERS = ["activation", "action", "start", "start kind", "load tier", "duration ms", "load s", "ttft s",
                  "node", "status"]


@activation.command("list")
@click.argument("name", required=False)
@click.option("--limit", type=click.IntRange(0, 200), default=30, show_default=True)
@click.option("--skip", type=click.IntRange(0), default=0)
@click.option("--since", type=int, metavar="MS", help="Only activations that started at or after (epoch ms).")
@click.option("--upto", type=int, metavar="MS", help="Only activations that started before (epoch ms).")
@client_options
@json_option
def list_(name: str | None, limit: int, skip: int, since: int | None, upto: int | None, apihost: str | None,
          auth: str | None, as_json: bool) -> None:
    """List activations, most recent first (of action NAME if given)."""
    with make_client(apihost, auth) as wsk:
        records = wsk.list_activations(name=name, limit=limit, skip=skip, since=since, upto=upto)
    if as_json:
        echo_json(records)
        return
    echo_table(TIMING_HEADERS, [timing_row(r) for r in records], title="activations")


@activation.command("get")
@_id_options
@click.option("--summary", "-s", is_flag=True, help="A timing table instead of the JSON record.")
@client_options
@json_option
def get(activation_id: str | None, last: bool, summary: bool, apihost: str | None, auth: str | None,
        as_json: bool) -> None:
    """Show an activation record (JSON)."""
    with make_client(apihost, auth) as wsk:
        record = wsk.get_activation(_pick(wsk, activation_id, last))
    if summary and not as_json:
        echo_table(TIMING_HEADERS, [timing_row(record)])
        return
    if not as_json:
        click.echo(f"ok: got activation {record.activationId}", err=True)
    echo_json(record)


@activation.command("result")
@_id_options
@client_options
@json_option
def result(activation_id: str | None, last: bool, apihost: str | None, auth: str | None, as_json: bool) -> None:
    """Show an activation's result (its `response.result`; the whole `response` with --json)."""
    with make_client(apihost, auth) as wsk:
        response = wsk.activation_result(_pick(wsk, activation_id, last))
    echo_json(response if as_json else response.get("result", response))


@activation.command("logs")
@_id_options
@click.option("--strip", "-r", is_flag=True, help="Only the log messages, without time stamp and stream.")
@client_options
@json_option
def logs(activation_id: str | None, last: bool, strip: bool, apihost: str | None, auth: str | None,
         as_json: bool) -> None:
    """Show an activation's log lines."""
    with make_client(apihost, auth) as wsk:
        lines = wsk.activation_logs(_pick(wsk, activation_id, last))
    if as_json:
        echo_json({"logs": lines})
        return
    for line in lines:
        click.echo(strip_log_line(line) if strip else line)


def strip_log_line(line: str) -> str:
    """``"<ISO ts> stdout: text"`` -> ``"text"`` (other lines unchanged)."""
    parts = line.split(" ", 2)
    if len(parts) == 3 and parts[1] in ("stdout:", "stderr:"):
        return parts[2]
    return line


@activation.command("poll")
@click.argument("name", required=False)
@click.option("--exit", "exit_after", type=click.FloatRange(0), metavar="SECONDS",
              help="Stop after this many seconds (default: until Ctrl-C).")
@click.option("--since-seconds", type=click.FloatRange(0), default=0, help="Also show activations this recent.")
@click.option("--interval", type=click.FloatRange(0.05, 60), default=1.0, show_default=True,
              help="Seconds between polls.")
@client_options
@json_option
def poll(name: str | None, exit_after: float | None, since_seconds: float, interval: float, apihost: str | None,
         auth: str | None, as_json: bool) -> None:
    """Print activations as they complete (of action NAME if given), like `wsk activation poll`."""
    started = time.monotonic()
    since = now_ms() - int(since_seconds * 1000)
    seen: set[str] = set()
    if not as_json:
        click.echo("Enter Ctrl-c to exit.", err=True)
    with make_client(apihost, auth) as wsk:
        while True:
            records = wsk.list_activations(name=name, limit=200, since=since)
            for record in sorted(records, key=lambda r: r.start):
                if record.activationId in seen:
                    continue
                seen.add(record.activationId)
                if as_json:
                    echo_json(record)
                    continue
                click.echo(f"\nActivation: '{record.name}' ({record.activationId})")
                for line in record.logs:
                    click.echo(line)
                echo_table(TIMING_HEADERS, [timing_row(record)])
            if exit_after is not None and time.monotonic() - started >= exit_after:
                return
            time.sleep(interval)


def compare_rows(records: list[ActivationRecord]) -> list[list[str]]:
    """One row per timing field, one column per activation (e.g. a cold start next to a warm one)."""
    rows = [list(field) for field in zip(TIMING_HEADERS[1:], *(timing_row(r)[1:] for r in records), strict=True)]
    rows.insert(3, ["wait ms", *(str(_annotation(r, "waitTime") or "") for r in records)])
    rows.insert(4, ["init ms", *(str(_annotation(r, "initTime") or "") for r in records)])
    return rows


def _annotation(record: ActivationRecord, key: str) -> object:
    return next((a.value for a in record.annotations if a.key == key), None)


@activation.command("compare")
@click.argument("activation_ids", nargs=-1, metavar="ID...")
@click.option("--last", "last_n", type=click.IntRange(1, 10), help="Compare the N most recent activations.")
@client_options
@json_option
def compare(activation_ids: tuple[str, ...], last_n: int | None, apihost: str | None, auth: str | None,
            as_json: bool) -> None:
    """Timings of activations side by side (start kind, load tier, load time, time to first token, ...)."""
    if bool(activation_ids) == bool(last_n):
        raise RequestError("give activation IDs or --last N")
    with make_client(apihost, auth) as wsk:
        if last_n:
            records = list(reversed(wsk.list_activations(limit=last_n)))
        else:
            records = [wsk.get_activation(i) for i in activation_ids]
    if as_json:
        echo_json(records)
        return
    echo_table(["", *(r.activationId[:12] for r in records)], compare_rows(records))
