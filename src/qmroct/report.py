"""A one-file HTML report: what people look at instead of the tables.

Sections: overview counts, KQI distributions per algorithm (with study
thresholds drawn in), pass rates per study and criterion, the worst scans
with their thumbnail (central B-scan, detected boundaries drawn), and every
failure with its reason. Plots are embedded as PNG, so the file can be mailed.
"""

from __future__ import annotations

import base64
import html
import io
import time
from pathlib import Path

import numpy as np
import pandas as pd

import qmroct


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _img(src: str, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img src="{src}" alt="{html.escape(alt)}"{size}>'


def distribution_plots(
    tidy: pd.DataFrame, thresholds: dict[str, list[tuple[str, float]]]
) -> list[tuple[str, str]]:
    """One figure per algorithm: a histogram per KQI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    ok = tidy[tidy["status"] == "ok"]
    for algorithm, group in ok.groupby("algorithm", sort=True):
        kqis = sorted(group["kqi"].unique())
        cols = min(3, len(kqis))
        rows = int(np.ceil(len(kqis) / cols))
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
        for ax, kqi in zip(axes.flat, kqis, strict=False):  # the grid may have spare axes
            values = group.loc[group["kqi"] == kqi, "value"].dropna()
            unit = group.loc[group["kqi"] == kqi, "unit"].iloc[0]
            ax.hist(
                values, bins=min(30, max(5, len(values) // 2)), color="#4a7ab5", edgecolor="white"
            )
            for text, threshold in thresholds.get(f"{algorithm}.{kqi}", []):
                ax.axvline(threshold, color="#c0392b", ls="--", lw=1)
                ax.text(threshold, ax.get_ylim()[1] * 0.9, f" {text}", color="#c0392b", fontsize=7)
            ax.set_title(f"{kqi}" + (f" [{unit}]" if unit else ""), fontsize=9)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(kqis) :]:
            ax.set_axis_off()
        fig.suptitle(
            f"{algorithm}: distribution over {group['scan'].size // max(1, len(kqis))} scans",
            fontsize=10,
        )
        fig.tight_layout()
        figures.append((algorithm, _png(fig)))
    return figures


def pass_rate_plot(studies: dict[str, pd.DataFrame]) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not studies:
        return None
    names = sorted(studies)
    fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(names) + 1.2))
    left = np.zeros(len(names))
    for verdict, colour in (("pass", "#27ae60"), ("missing", "#f39c12"), ("fail", "#c0392b")):
        counts = np.array([(studies[n]["overall"] == verdict).sum() for n in names], dtype=float)
        totals = np.array([max(1, len(studies[n])) for n in names], dtype=float)
        share = counts / totals * 100
        ax.barh(names, share, left=left, color=colour, label=verdict)
        left += share
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of scans")
    ax.legend(loc="lower right", fontsize=8, ncols=3)
    ax.set_title("Usable scans per study", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def worst_scans(
    studies: dict[str, pd.DataFrame],
    criteria: dict[str, list[tuple[str, str, float]]],
    tidy: pd.DataFrame,
    limit: int,
) -> pd.DataFrame:
    """Scans ranked by how many study criteria they miss plus how many algorithms failed on them."""
    keys = ["project", "subject", "session", "scan"]
    reasons: dict[tuple, list[str]] = {}
    for name, table in studies.items():
        for row in table.to_dict("records"):
            key = tuple(row[k] for k in keys)
            for column, text, _ in criteria.get(name, []):
                if row[text] != "pass":
                    value = row[column]
                    shown = "n/a" if value != value else f"{value:.3g}"
                    reasons.setdefault(key, []).append(f"{name}: {text} ({row[text]}, {shown})")
    failed = tidy[tidy["status"] == "failed"].drop_duplicates(keys + ["algorithm"])
    for row in failed.to_dict("records"):
        reasons.setdefault(tuple(row[k] for k in keys), []).append(
            f"{row['algorithm']} failed: {row['error']}"
        )
    ranked = pd.DataFrame(
        [
            dict(zip(keys, key, strict=True))
            | {"failed": len(v), "reasons": "; ".join(dict.fromkeys(v))}
            for key, v in reasons.items()
        ],
        columns=keys + ["failed", "reasons"],
    )
    ranked = ranked.sort_values(["failed"] + keys, ascending=[False] + [True] * len(keys))
    return ranked.head(limit)


def render_report(
    tidy: pd.DataFrame,
    studies: dict[str, pd.DataFrame],
    criteria: dict[str, list[tuple[str, str, float]]],
    thumbnails_dir: Path,
    worst_limit: int = 6,
    versions_section: str = "",
    path_keys: dict[tuple[str, str], str] | None = None,
) -> str:
    """The complete HTML page. ``criteria``: study -> [(column, text, threshold)].

    ``path_keys``: (project, session label) -> the session's path key, the folder its
    thumbnails are under (a label is archive content, never a path: qmroct.paths);
    without an entry the key a label gets by default.
    """
    from qmroct.paths import path_segment

    path_keys = path_keys or {}
    thresholds: dict[str, list[tuple[str, float]]] = {}
    for study, items in criteria.items():
        for column, _text, threshold in items:
            thresholds.setdefault(column, []).append((study, threshold))

    n_sessions = tidy[["project", "session"]].drop_duplicates().shape[0]
    n_scans = tidy[tidy["scan"] != ""][["project", "session", "scan"]].drop_duplicates().shape[0]
    failures = tidy[tidy["status"] == "failed"].drop_duplicates(
        ["project", "session", "scan", "algorithm"]
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>qmroct quality report</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
        "table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 7px;text-align:left}"
        "th{background:#f2f2f2}.fail{color:#c0392b}.pass{color:#27ae60}.missing{color:#d68910}"
        ".gallery{display:flex;flex-wrap:wrap;gap:14px}"
        ".card{border:1px solid #ddd;padding:6px;width:330px;font-size:12px}"
        "h2{border-bottom:1px solid #ddd;padding-bottom:3px}</style></head><body>",
        "<h1>OCT quality report</h1>",
        f"<p>{n_sessions} sessions, {n_scans} scans, "
        f"algorithms: {', '.join(sorted(tidy['algorithm'].unique()))}. "
        f"{len(failures)} scan-algorithm failures. qmroct {qmroct.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}.</p>",
        # written beside this page at the end of every run (qmroct.runhistory)
        "<p><a href='runs.html'>Run history</a>: "
        "every run, what triggered it, its jobs and failures.</p>",
    ]

    parts.append("<h2>Studies</h2>")
    plot = pass_rate_plot(studies)
    if plot:
        parts.append(_img(plot, "pass rates per study"))
        for name in sorted(studies):
            table = studies[name]
            rows = []
            for _column, text, _ in criteria.get(name, []):
                counts = table[text].value_counts() if text in table else pd.Series(dtype=int)
                rows.append(
                    f"<tr><td>{html.escape(text)}</td><td class='pass'>{counts.get('pass', 0)}</td>"
                    f"<td class='fail'>{counts.get('fail', 0)}</td>"
                    f"<td class='missing'>{counts.get('missing', 0)}</td></tr>"
                )
            usable = (table["overall"] == "pass").sum()
            parts.append(
                f"<h3>{html.escape(name)}: {usable} of {len(table)} scans usable</h3>"
                "<table><tr><th>criterion</th><th>pass</th><th>fail</th><th>missing</th></tr>"
                + "".join(rows)
                + "</table>"
            )
    else:
        parts.append("<p>No studies declared in config.yaml.</p>")

    parts.append("<h2>Worst scans</h2>")
    worst = worst_scans(studies, criteria, tidy, worst_limit)
    if worst.empty:
        parts.append("<p>No scan failed a criterion or an algorithm.</p>")
    else:
        parts.append("<div class='gallery'>")
        for row in worst.itertuples(index=False):
            key = path_keys.get((row.project, row.session)) or path_segment(row.session)
            thumb = thumbnails_dir / row.project / key / f"{row.scan}.png"
            picture = (
                _img(
                    "data:image/png;base64," + base64.b64encode(thumb.read_bytes()).decode(),
                    f"{row.session} scan {row.scan}",
                    320,
                )
                if thumb.is_file()
                else "<p>(no thumbnail: scan not readable)</p>"
            )
            parts.append(
                f"<div class='card'>{picture}<br>"
                f"<b>{html.escape(row.project)}/{html.escape(row.session)} "
                f"scan {html.escape(str(row.scan))}</b>"
                f"<br><span class='fail'>{html.escape(row.reasons)}</span></div>"
            )
        parts.append("</div>")

    parts.append("<h2>KQI distributions</h2>")
    for algorithm, src in distribution_plots(tidy, thresholds):
        parts.append(f"<h3>{html.escape(algorithm)}</h3>{_img(src, algorithm + ' distributions')}")

    if versions_section:  # algorithm versions, drift, run manifest (qmroct.provenance)
        parts.append(versions_section)

    parts.append("<h2>Failures</h2>")
    if failures.empty:
        parts.append("<p>None.</p>")
    else:
        parts.append(
            "<table><tr><th>project</th><th>session</th><th>scan</th><th>algorithm</th><th>reason</th></tr>"
        )
        for row in failures.itertuples(index=False):
            parts.append(
                f"<tr><td>{html.escape(row.project)}</td><td>{html.escape(row.session)}</td><td>{html.escape(str(row.scan))}</td>"
                f"<td>{html.escape(row.algorithm)}</td><td>{html.escape(str(row.error))}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
