"""Charts a person can open without network: Vega-Lite specs rendered to SVG/PNG by vl-convert
(for model cards and monitor), and an HTML template for `dvc plots show` with Vega, Vega-Lite and
vega-embed inlined from vl-convert's bundle (DVC's own page loads them from a CDN)."""

from __future__ import annotations

from pathlib import Path

VEGA_LITE = "5.21"  # DVC's plot templates are Vega-Lite 5 specs


def line_chart(rows: list[dict], x: str, ys: list[str], title: str, color: str | None = None) -> dict:
    """A Vega-Lite spec: one line per metric in `ys` (or per value of `color` for one metric)."""
    fold = {"fold": ys, "as": ["metric", "value"]}
    series = color or "metric"
    return {
        "$schema": f"https://vega.github.io/schema/vega-lite/v{VEGA_LITE.split('.')[0]}.json",
        "title": title,
        "width": 480,
        "height": 240,
        "data": {"values": rows},
        "transform": [fold] if color is None else [],
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": x, "type": "ordinal"},
            "y": {"field": "value" if color is None else ys[0], "type": "quantitative"},
            "color": {"field": series, "type": "nominal"},
        },
    }


def write_svg(spec: dict, path: Path) -> Path:
    import vl_convert

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(vl_convert.vegalite_to_svg(spec, vl_version=VEGA_LITE), encoding="utf-8")
    return path


def write_png(spec: dict, path: Path, scale: float = 1.0) -> Path:
    import vl_convert

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(vl_convert.vegalite_to_png(spec, vl_version=VEGA_LITE, scale=scale))
    return path


PAGE = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<title>loraloop plots</title>
<!-- Vega {vega}, Vega-Lite {vega_lite}, vega-embed {embed}: inlined from vl-convert-python {vlc}, no network needed -->
<script type="text/javascript">
{bundle}
</script>
<style>table {{ border-spacing: 15px; }} body {{ font-family: sans-serif; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def offline_template(path: Path) -> Path:
    """The HTML template for `dvc plots show --html-template`, written once per vl-convert version.
    It has no {scripts} placeholder, so DVC's CDN script tags are left out."""
    from importlib.metadata import version

    import vl_convert

    if path.is_file() and f"vl-convert-python {version('vl-convert-python')}" in path.read_text(encoding="utf-8"):
        return path
    page = PAGE.format(
        vega=vl_convert.get_vega_version(),
        vega_lite=VEGA_LITE,
        embed=vl_convert.get_vega_embed_version(),
        vlc=version("vl-convert-python"),
        bundle=vl_convert.javascript_bundle(vl_version=VEGA_LITE).replace("</script", "<\\/script"),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
