"""The report's HTML page: sections of figures, the seam audit's numbers, the provenance."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

STYLE = """body{font-family:sans-serif;max-width:1400px;margin:2em auto;color:#222}
img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;font-size:90%}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}pre{background:#f6f6f6;padding:8px;overflow:auto}"""


def table(rows: list[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>"


def audit_rows(audit: dict[str, Any] | None, gradient: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    if audit is not None:
        rows += [(k.replace("_", " "), audit[k]) for k in ("faces", "touching_pairs", "accepted_pairs", "rejected_pairs",
                                                            "contact_voxels", "object_face_crossings", "objects_spanning_blocks")]
        rows.append(("blocks per spanning object", audit["blocks_per_spanning_object"]))
        rows.append(("merge rule", {k: v for k, v in audit["rule"].items() if k in ("method", "min_contact", "max_distance", "threshold")}))
    else:
        rows.append(("seam audit", "not recorded (a run made before the audit existed, or a predict-only output)"))
    if "ratio" in gradient:
        rows.append(("seam gradient ratio (re-predicted region)", f"{gradient['ratio']:.3f}" if gradient["ratio"] else "no seam"))
    else:
        rows.append(("seam gradient ratio", gradient.get("skipped")))
    return rows


def unreadable_text(found: dict[str, Any] | None) -> str:
    """The input chunks a run read as empty (``input.unreadable: empty``), with their regions."""
    from ..volume.errors import Unreadable

    if not found:
        return "none"
    shown = [Unreadable.from_json((r["chunk"], r["region"])) for r in found["first"][:10]]
    more = f"; ... (all in {found['all']})" if found["chunks"] > len(shown) else ""
    return f"{found['chunks']} chunk(s) read as empty: " + "; ".join(
        f"{u.chunk} ({u.region.describe()})" for u in shown) + more


def provenance_rows(meta: dict[str, Any]) -> list[tuple[str, Any]]:
    cfg = meta["config"]
    return [("pipeline version", meta.get("pipeline_version")), ("input", f"{cfg['input']['path']} ({cfg['input'].get('dataset')})"),
            ("unreadable input", unreadable_text(meta.get("unreadable_input"))),
            ("model", f"{cfg['model']['checkpoint']} (digest {meta.get('model_digest')}, {cfg['model']['precision']})"),
            ("plan", meta.get("plan")), ("clustering", meta.get("parameters")), ("objects", meta.get("objects")),
            ("timing (s)", meta.get("timing_s")), ("resumed blocks", meta.get("resumed_blocks")),
            ("versions", meta.get("versions"))]


def write_page(path: Path, result: Path, meta: dict[str, Any], sections: list[dict[str, Any]],
               audit: dict[str, Any] | None, gradient: dict[str, Any], seconds: float) -> Path:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>pipeline report: {html.escape(str(result))}</title>",
             f"<style>{STYLE}</style></head><body><h1>Segmentation report</h1>",
             f"<p>{html.escape(str(result))}: {meta.get('objects')} objects. Report made in {seconds:.1f} s. "
             "Seam numbers as JSON: <a href='seams.json'>seams.json</a>.</p>",
             "<h2>Seams in numbers</h2>", table(audit_rows(audit, gradient))]
    for s in sections:
        parts.append(f"<h2>{html.escape(s['title'])}</h2><p>{html.escape(s['text'])}</p>")
        if s["png"]:
            parts.append(f"<img src='{s['png']}' alt='{html.escape(s['title'])}'>")
    if audit is not None and audit["closest_rejected"]:
        parts.append("<h3>Closest rejected pairs</h3><pre>" + html.escape(json.dumps(audit["closest_rejected"][:10], indent=0)) + "</pre>")
    parts += ["<h2>Provenance</h2>", table(provenance_rows(meta)),
              "<h3>Config</h3><pre>" + html.escape(json.dumps(meta["config"], indent=1)) + "</pre></body></html>"]
    path.write_text("\n".join(parts))
    return path
