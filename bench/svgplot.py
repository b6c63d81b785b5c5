"""Small SVG charts for docs/PERFORMANCE.md, written by hand so the bench needs no plotting library."""

from __future__ import annotations

from html import escape

W, H = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 80, 20, 40, 60
COLORS = ["#4c78a8", "#f58518", "#54a24b", "#b279a2", "#9d755d", "#e45756"]


def _nice_max(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    step = 10 ** len(str(int(value))) / 10
    for m in (1, 2, 2.5, 5, 10):
        if m * step >= value:
            return m * step
    return 10 * step


def _frame(title: str, y_label: str, y_max: float, ticks: int = 5) -> list[str]:
    plot_h = H - TOP - BOTTOM
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{escape(title)}</text>',
           f'<text transform="translate(16,{TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>']
    for i in range(ticks + 1):
        v = y_max * i / ticks
        y = H - BOTTOM - plot_h * i / ticks
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        label = f"{v:,.0f}" if y_max >= 10 else f"{v:.1f}"
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    out.append(f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}" stroke="#333"/>')
    out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}" stroke="#333"/>')
    return out


def bars(title: str, y_label: str, items: list[tuple[str, float]]) -> str:
    """A bar chart: one bar per (label, value), value printed on top."""
    y_max = _nice_max(max(v for _, v in items) * 1.1)
    out = _frame(title, y_label, y_max)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    slot = plot_w / len(items)
    for i, (label, value) in enumerate(items):
        h = plot_h * value / y_max
        x = LEFT + slot * i + slot * 0.15
        out.append(f'<rect x="{x:.1f}" y="{H - BOTTOM - h:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" fill="{COLORS[i % len(COLORS)]}"/>')
        out.append(f'<text x="{x + slot * 0.35:.1f}" y="{H - BOTTOM - h - 5:.1f}" text-anchor="middle">{value:,.0f}</text>')
        for j, part in enumerate(label.split("\n")):
            out.append(f'<text x="{x + slot * 0.35:.1f}" y="{H - BOTTOM + 16 + 14 * j}" text-anchor="middle">{escape(part)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def lines(title: str, x_label: str, y_label: str, series: dict[str, list[tuple[float, float]]],
          goal: tuple[str, float] | None = None) -> str:
    """A line chart of (x, y) points per series, with an optional dashed horizontal goal line."""
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts] + ([goal[1]] if goal else [])
    x_max, y_max = max(xs), _nice_max(max(ys) * 1.1)
    out = _frame(title, y_label, y_max)
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + plot_w * x / x_max

    def py(y: float) -> float:
        return H - BOTTOM - plot_h * y / y_max

    for x in sorted(set(xs)):
        out.append(f'<text x="{px(x):.1f}" y="{H - BOTTOM + 16}" text-anchor="middle">{x:g}</text>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{H - 18}" text-anchor="middle">{escape(x_label)}</text>')
    if goal:
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{py(goal[1]):.1f}" y2="{py(goal[1]):.1f}" stroke="#e45756" stroke-dasharray="6 4"/>')
        out.append(f'<text x="{W - RIGHT - 4}" y="{py(goal[1]) - 5:.1f}" text-anchor="end" fill="#e45756">{escape(goal[0])}</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{'M' if k == 0 else 'L'}{px(x):.1f},{py(y):.1f}" for k, (x, y) in enumerate(sorted(pts)))
        out.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        for x, y in pts:
            out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{color}"/>')
            out.append(f'<text x="{px(x):.1f}" y="{py(y) - 8:.1f}" text-anchor="middle">{y:.2f}</text>')
        out.append(f'<text x="{LEFT + 10}" y="{TOP + 16 + 16 * i}" fill="{color}">{escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
