"""Alert counts by severity over the last hour as a small server-rendered SVG (no script, no CDN)."""

from __future__ import annotations

from markupsafe import Markup, escape

from preguard.console.state import SEVERITIES
from preguard.proto import Severity

WIDTH, HEIGHT = 480, 140
_LEFT, _BOTTOM, _TOP = 34, 22, 10  # room for the axis labels


def severity_chart(slices: list[dict[Severity, int]], totals: dict[Severity, int]) -> Markup:
    """Stacked bars, one per time slice (oldest left), coloured by severity through CSS classes.

    Colours come from the stylesheet (class="sev-high"), never from style attributes, so the
    Content-Security-Policy can forbid inline styles.
    """
    peak = max((sum(s.values()) for s in slices), default=0)
    scale = max(peak, 1)
    plot_h = HEIGHT - _BOTTOM - _TOP
    slot = (WIDTH - _LEFT) / max(len(slices), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="severity-chart" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(_summary(totals))}">',
        f"<title>{escape(_summary(totals))}</title>",
        f'<line class="axis" x1="{_LEFT}" y1="{HEIGHT - _BOTTOM}" x2="{WIDTH}" y2="{HEIGHT - _BOTTOM}"/>',
        f'<text class="tick" x="{_LEFT - 4}" y="{_TOP + 8}" text-anchor="end">{peak}</text>',
        f'<text class="tick" x="{_LEFT - 4}" y="{HEIGHT - _BOTTOM}" text-anchor="end">0</text>',
    ]
    for i, counts in enumerate(slices):
        x = _LEFT + i * slot + 2
        y = float(HEIGHT - _BOTTOM)
        for sev in reversed(SEVERITIES):  # low at the bottom, critical on top
            n = counts.get(sev, 0)
            if not n:
                continue
            h = plot_h * n / scale
            y -= h
            parts.append(
                f'<rect class="sev-{sev.value}" data-severity="{sev.value}" data-count="{n}" '
                f'x="{x:.1f}" y="{y:.1f}" width="{slot - 4:.1f}" height="{h:.1f}">'
                f"<title>{n} {sev.value}</title></rect>"
            )
    ticks = ((_LEFT, "-60m", "start"), ((_LEFT + WIDTH) / 2, "-30m", "middle"), (WIDTH, "now", "end"))
    for x, label, anchor in ticks:
        parts.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">{label}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _summary(totals: dict[Severity, int]) -> str:
    return "alerts in the last hour: " + ", ".join(f"{s.value} {totals.get(s, 0)}" for s in SEVERITIES)
