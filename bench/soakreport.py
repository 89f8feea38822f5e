"""The soak's report: one line per sample as it runs, then the tables and the verdict (``bench/soak.py``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from report import fmt


def sample_line(s: dict[str, Any]) -> str:
    traffic = ""
    if "requests" in s:
        traffic = (
            f", {fmt(s['rps']):>5} req/s, p99 {fmt(s['p99_ms'], 1):>5} ms, {s['requests']:>8} requests, "
            f"unexpected {s['unexpected']}"
        )
    return (
        f"t={s['t']:>6.0f} s  RSS {s['rss_mb']:6.1f} MB, fds {s['fds']:>4} ({s['sockets']:>3} sockets), "
        f"threads {s['threads']}, gateway CPU {s['gateway_cpu_pct']:3.0f} %, foreign {s['foreign_pct']:3.0f} %"
        + traffic
    )


def print_report(results: dict[str, Any], output: Path) -> None:
    samples, verdict, final = results["samples"], results["verdict"], results["final"]
    print()
    print("| t (s) | RSS (MB) | fds | sockets | threads | gateway CPU % | req/s | requests | unexpected |")
    print("|---|---|---|---|---|---|---|---|---|")
    warm = verdict["warmup_samples"]
    for i, s in enumerate(samples, 1):
        mark = " (warm-up end)" if i == warm else ""
        print(
            f"| {s['t']:.0f}{mark} | {s['rss_mb']:.1f} | {s['fds']} | {s['sockets']} | {s['threads']} "
            f"| {s['gateway_cpu_pct']:.0f} | {fmt(s['rps'])} | {s['requests']} | {s['unexpected']} |"
        )
    seconds = final["t"]
    print()
    print("| kind | weight | requests | req/s | unexpected | p50 ms | p99 ms | what |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in results["kinds"]:
        name = kind["name"]
        lat = final["latency_ms"].get(name) or {}
        print(
            f"| {name} | {kind['weight']} | {final['requests'][name]} | {fmt(final['requests'][name] / seconds, 1)} "
            f"| {final['unexpected'][name]} | {fmt(lat.get('p50'), 1)} | {fmt(lat.get('p99'), 1)} | {kind['what']} |"
        )
    for name, found in final["samples"].items():
        for detail in found:
            print(f"UNEXPECTED [{name}] {detail}")
    for line in results["log_errors"]["first"]:
        print(f"GATEWAY LOG: {line}")
    rss, fds, after = verdict["rss_mb"], verdict["fds"], results["after"]
    print()
    print(
        f"RSS: {rss['warmup_end']:.1f} MB at the end of the warm-up ({verdict['warmup_end_s']:.0f} s), "
        f"{rss['end']:.1f} MB at the end: {verdict['rss_growth_mb']:+.1f} MB (bound {verdict['rss_bound_mb']:.1f} "
        f"MB, so a leak of {fmt(verdict['detectable_bytes_per_request'])} bytes per request shows); slope "
        f"{fmt(verdict['rss_slope_mb_per_min'], 3, signed=True)} MB/min; "
        f"max after the warm-up {rss['max_after_warmup']:.1f} MB"
    )
    print(
        f"fds: {fds['warmup_end']} at the end of the warm-up, {fds['end']} at the end: {verdict['fd_growth']:+d} "
        f"(bound +{verdict['fd_bound']}); slope {fmt(verdict['fd_slope_per_min'], 2, signed=True)}/min; "
        f"max after the warm-up {fds['max_after_warmup']}; {after['fds']} after the traffic "
        f"({results['start']['fds']} before it; waited {after['t']:.0f} s)"
    )
    flight = results["in_flight_after"]
    print(
        f"after the traffic: in flight {fmt(flight.get('requests', math.nan) - 1)} requests (the scrape itself not "
        f"counted), {fmt(flight.get('streams'))} streams; gateway log: {results['log_errors']['count']} ERROR line(s)"
    )
    print(f"unexpected outcomes: {results['errors']}; raw samples: {os.path.relpath(output)}")
    word = "FLAT" if verdict["flat"] else "NOT FLAT"
    print(f"verdict: {word} after warm-up" + ("" if results["errors"] == 0 else f", with {results['errors']} error(s)"))
