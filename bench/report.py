"""The results: per-scenario summaries, the Markdown tables and closing lines on stdout, the raw JSON file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from scenarios import PACED_DELAY_MS, SCENARIOS, STREAM_EVENTS, TARGETS_X

#: streams whose first chunk is timed at their first content event (``Scenario.first_marker``)
MARKED = {s.name for s in SCENARIOS if s.first_marker}


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def summarise(name: str, runs: dict[str, dict[str, Any]], failed_checks: int, stream: bool = False) -> dict[str, Any]:
    gw, direct = runs["gateway"], runs["direct"]
    gw1, direct1 = runs["gateway_c1"], runs["direct_c1"]
    lat_gw, lat_d = gw1.get("latency_ms", {}), direct1.get("latency_ms", {})
    summary: dict[str, Any] = {
        "rps_gateway": gw["rps"],
        "rps_direct": direct["rps"],
        "rps_ratio": gw["rps"] / direct["rps"] if direct["rps"] else None,
        "gateway_cpu_us_per_req": gw["gateway_cpu_us_per_req"],
        "gateway_cpu_us_per_req_c1": gw1["gateway_cpu_us_per_req"],
        "gateway_cpu_pct": gw["gateway_cpu_pct"],
        "added_p50_ms_c1": diff(lat_gw.get("p50"), lat_d.get("p50")),
        "added_p99_ms_c1": diff(lat_gw.get("p99"), lat_d.get("p99")),
        "p50_ms_c1": {"gateway": lat_gw.get("p50"), "direct": lat_d.get("p50")},
        "p99_ms_c1": {"gateway": lat_gw.get("p99"), "direct": lat_d.get("p99")},
        "errors": sum(r["errors"] for r in runs.values()) + failed_checks,
        "failed_checks": failed_checks,
    }
    if stream:
        cpu = gw["gateway_cpu_us_per_req"]
        ttfc_gw, ttfc_d = gw1.get("first_chunk_ms", {}), direct1.get("first_chunk_ms", {})
        added = summary["added_p50_ms_c1"]
        summary.update(
            {
                "events_per_s_gateway": gw["rps"] * STREAM_EVENTS,
                "gateway_cpu_us_per_event": cpu / STREAM_EVENTS if cpu is not None else None,
                "first_chunk_p50_ms_c1": {"gateway": ttfc_gw.get("p50"), "direct": ttfc_d.get("p50")},
                "added_first_chunk_p50_ms_c1": diff(ttfc_gw.get("p50"), ttfc_d.get("p50")),
                "added_us_per_chunk_c1": added * 1000 / STREAM_EVENTS if added is not None else None,
            }
        )
        paced_gw, paced_d = runs.get("gateway_paced"), runs.get("direct_paced")
        if paced_gw and paced_d:
            cpu = paced_gw["gateway_cpu_us_per_req"]
            summary["paced"] = {
                "delay_ms": PACED_DELAY_MS,
                "rps_gateway": paced_gw["rps"],
                "rps_direct": paced_d["rps"],
                "events_per_s_gateway": paced_gw["rps"] * STREAM_EVENTS,
                "gateway_cpu_pct": paced_gw["gateway_cpu_pct"],
                "gateway_cpu_us_per_req": cpu,
                "gateway_cpu_us_per_event": cpu / STREAM_EVENTS if cpu is not None else None,
                "added_p50_ms": diff(paced_gw["latency_ms"].get("p50"), paced_d["latency_ms"].get("p50")),
                "added_p99_ms": diff(paced_gw["latency_ms"].get("p99"), paced_d["latency_ms"].get("p99")),
            }
    hop = runs.get("nginx")
    if hop is not None:
        cpu, floor = gw["gateway_cpu_us_per_req"], hop["gateway_cpu_us_per_req"]
        summary["nginx_cpu_us_per_req"] = floor
        summary["x_nginx"] = cpu / floor if cpu is not None and floor else None
    if name in TARGETS_X:
        summary["target_x_nginx"] = TARGETS_X[name]
        ratio = summary.get("x_nginx")
        summary["meets_target"] = None if ratio is None else ratio <= TARGETS_X[name]
    return summary


def fmt(value: float | None, digits: int = 0, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+,.{digits}f}" if signed else f"{value:,.{digits}f}"


def machine_line(machine: dict[str, Any]) -> str:
    """The machine in one line, with the timeit figure that tells how fast one core is."""
    return (
        f"machine: {machine['nproc']} CPU(s) ({machine['cpu_model'] or 'unknown'}), Linux {machine['kernel']}, "
        f'Python {machine["python"]}; python -m timeit "sum(range(1000))": '
        f"{fmt(machine['timeit_sum_range_1000_us'], 1)} µs per loop"
    )


def tables(results: dict[str, Any]) -> str:
    out = [
        "| scenario | req/s via gateway | req/s direct | gateway ÷ direct | gateway CPU µs/req | "
        "nginx hop CPU µs/req | × nginx hop | added p50 ms (c=1) | added p99 ms (c=1) | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, data in results["scenarios"].items():
        s = data["summary"]
        ratio = f"{s['rps_ratio']:.2f}" if s["rps_ratio"] is not None else "n/a"
        out.append(
            f"| {name} | {fmt(s['rps_gateway'])} | {fmt(s['rps_direct'])} | {ratio} | "
            f"{fmt(s['gateway_cpu_us_per_req'])} | {fmt(s.get('nginx_cpu_us_per_req'), 1)} | "
            f"{fmt(s.get('x_nginx'), 1)} | {fmt(s['added_p50_ms_c1'], 2, True)} | "
            f"{fmt(s['added_p99_ms_c1'], 2, True)} | {s['errors']} |"
        )
    for name, data in results["scenarios"].items():
        s = data["summary"]
        if "first_chunk_p50_ms_c1" not in s:
            continue
        connections = results["settings"]["connections"]
        rows = [(f"burst (no delay), c={connections}", s, s["added_p50_ms_c1"], "c=1")]
        if "paced" in s:
            p = s["paced"]
            rows.append((f"paced ({p['delay_ms']:g} ms between events), c={connections}", p, p["added_p50_ms"], ""))
        out += [
            "",
            f"Stream `{name}` ({STREAM_EVENTS} events per stream; latency = time to the last byte):",
            "",
            "| load | streams/s via gateway | streams/s direct | events/s via gateway | gateway CPU % of a core | "
            "CPU µs/stream | CPU µs/event | added p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label, row, added, note in rows:
            out.append(
                f"| {label} | {fmt(row['rps_gateway'])} | {fmt(row['rps_direct'])} | "
                f"{fmt(row['events_per_s_gateway'])} | {fmt(row['gateway_cpu_pct'])} | "
                f"{fmt(row['gateway_cpu_us_per_req'])} | {fmt(row['gateway_cpu_us_per_event'], 1)} | "
                f"{fmt(added, 2, True)}{' (' + note + ')' if note else ''} |"
            )
        ttfc = s["first_chunk_p50_ms_c1"]
        first = "first content event" if name in MARKED else "first chunk"
        out += [
            "",
            f"At c=1: {first} p50 {fmt(ttfc['gateway'], 2)} ms via the gateway, {fmt(ttfc['direct'], 2)} ms direct "
            f"({fmt(s['added_first_chunk_p50_ms_c1'], 2, True)} ms); added time per chunk "
            f"{fmt(s['added_us_per_chunk_c1'], 1, True)} µs (added p50 ÷ {STREAM_EVENTS}).",
        ]
    return "\n".join(out)


def write_json(results: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")


def print_report(results: dict[str, Any], load_cpus: set[int] | None, output: Path) -> None:
    """The tables, then whether the load CPU capped the direct runs, the targets, the hygiene line."""
    print()
    print(tables(results))
    print()
    if load_cpus:
        load_cpu = f"cpu{min(load_cpus)}"
        capped = [
            name
            for name, data in results["scenarios"].items()
            if data["runs"]["direct"]["cpu_busy_pct"].get(load_cpu, 0) >= 95
        ]
        if capped:
            print(
                f"note: in the direct runs of {', '.join(capped)} the load CPU ({load_cpu}: upstream + load generator) "
                "was saturated, so those direct figures are lower bounds of what the upstream can do."
            )
    for name, limit in TARGETS_X.items():
        if name not in results["scenarios"]:
            continue
        s = results["scenarios"][name]["summary"]
        if s["meets_target"] is None:
            print(f"target {name}: ≤ {limit:g}× the nginx hop's CPU/request: n/a (no nginx hop in this run)")
            continue
        verdict = "meets" if s["meets_target"] else "OVER"
        print(
            f"target {name}: ≤ {limit:g}× the nginx hop's CPU/request, measured {fmt(s.get('x_nginx'), 1)}× "
            f"({fmt(s['gateway_cpu_us_per_req'])} µs against {fmt(s.get('nginx_cpu_us_per_req'), 1)} µs): {verdict}"
        )
    h = results["hygiene"]
    print(
        f"hygiene: {h['runs']} runs, {h['re_runs_for_foreign_load']} re-run(s) for foreign load, "
        f"foreign load median {h['median_foreign_pct']} % / max {h['max_foreign_pct']} % of a core, "
        f"{h['polluted_runs_kept']} polluted run(s) kept; gateway RSS {results.get('gateway_rss_mb')} MB; "
        f"{results['elapsed_s']} s in all"
    )
    print(f"raw results: {output}")
