"""A small line plot drawn with Pillow (no plotting library needed for two charts)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

W, H, M = 900, 420, 70


def line_plot(path: Path, points: list[tuple[float, float]], *, title: str, xlabel: str,
              ylabel: str, hline: float | None = None) -> None:
    img = Image.new("RGB", (W, H), "white")
    draw = ImageDraw.Draw(img)
    xs = [p[0] for p in points] or [0, 1]
    ys = [p[1] for p in points] or [0, 1]
    x_max = max(xs) or 1
    y_max = max(ys + ([hline * 1.1] if hline else [])) or 1

    def at(x: float, y: float) -> tuple[float, float]:
        return M + (W - 2 * M) * x / x_max, H - M - (H - 2 * M) * y / y_max

    draw.rectangle([M, M, W - M, H - M], outline="black")
    for i in range(6):
        y = y_max * i / 5
        _, py = at(0, y)
        draw.line([M - 5, py, M, py], fill="black")
        draw.text((4, py - 6), f"{y:,.0f}", fill="black")
        x = x_max * i / 5
        px, _ = at(x, 0)
        draw.line([px, H - M, px, H - M + 5], fill="black")
        draw.text((px - 10, H - M + 8), f"{x:,.0f}", fill="black")
    if hline is not None:
        _, py = at(0, hline)
        draw.line([M, py, W - M, py], fill=(200, 0, 0), width=2)
        draw.text((W - M - 120, py - 16), f"limit {hline:,.0f}", fill=(200, 0, 0))
    if len(points) > 1:
        draw.line([at(x, y) for x, y in points], fill=(0, 70, 200), width=2)
    draw.text((M, 20), title, fill="black")
    draw.text((W // 2 - 30, H - 30), xlabel, fill="black")
    draw.text((4, M - 24), ylabel, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
