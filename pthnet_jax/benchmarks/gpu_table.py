"""The GPU report's files: OUT/gpu_report.json (everything) and OUT/gpu_report.md (the table)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pthnet_jax.fsutil import atomic_write, atomic_write_json


def header(report: dict[str, Any]) -> dict[str, str]:
    """Device, driver, versions, date and command, from the environment part (or what is known)."""
    env = (report["parts"].get("environment") or {}).get("result") or {}
    versions = env.get("versions", {})
    return {"device": env.get("device_kind", "unknown (environment part not measured)"),
            "driver": env.get("driver") or "unknown",
            "jax / jaxlib": f"{versions.get('jax', '?')} / {versions.get('jaxlib', '?')}",
            "torch": str(versions.get("torch", "?")),
            "date": report["date"], "command": report["command"] or "?",
            "mode": "tiny (CPU smoke run: not a measurement)" if report.get("tiny") else "full size"}


def _figures(result: dict[str, Any], prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """The numbers and short strings of a result, nested dicts flattened two levels deep."""
    rows = []
    for key, value in result.items():
        if key in ("summary",) or key.endswith("_text"):
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            rows.append((prefix + key, f"{value:.4g}" if isinstance(value, float) else str(value)))
        elif isinstance(value, str) and len(value) <= 80:
            rows.append((prefix + key, value))
        elif isinstance(value, dict) and depth < 2:
            rows.extend(_figures(value, f"{prefix}{key}.", depth + 1))
    return rows


def markdown(report: dict[str, Any]) -> str:
    lines = ["# pthnet-jax GPU report", ""]
    lines += [f"- {key}: {value}" for key, value in header(report).items()]
    lines += [f"- wall: {report.get('seconds', 0):.0f} s of a {report['total_budget_s']:.0f} s budget", "",
              "| part | status | s / budget s | result |", "| --- | --- | --- | --- |"]
    for name, entry in report["parts"].items():
        text = entry.get("reason") if entry["status"] != "measured" else entry["result"].get("summary", "")
        text = str(text).replace("|", "/").replace("\n", " ")
        lines.append(f"| {name} | {entry['status']} | {entry.get('seconds', 0):.0f} / {entry['budget_s']:.0f} | {text} |")
    for name, entry in report["parts"].items():
        result = entry.get("result") or entry.get("partial")
        if not result:
            continue
        lines += ["", f"## {name}" + ("" if entry["status"] == "measured" else f" ({entry['status']}, partial)"), ""]
        if entry.get("about"):
            lines += [entry["about"], ""]
        for key, value in result.items():
            if key.endswith("_text") and isinstance(value, str):
                lines += ["```", value, "```", ""]
        lines += [f"- {key}: {value}" for key, value in _figures(result)]
    return "\n".join(lines) + "\n"


def write_report(out: Path, report: dict[str, Any]) -> None:
    atomic_write_json(out / "gpu_report.json", {**report, "header": header(report)})
    atomic_write(out / "gpu_report.md", markdown(report))
