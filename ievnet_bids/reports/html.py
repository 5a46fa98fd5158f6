"""Jinja2 rendering of the HTML reports (templates ship in ``ievnet_bids/reports/templates``)."""

from __future__ import annotations

import html
import math
from functools import cache
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

TEMPLATES = Path(__file__).with_name("templates")


def _fmt(value: Any, digits: int = 1) -> str:
    """Numbers with ``digits`` decimals; ``None``/NaN as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def _pvalue(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.3f}"


@cache
def environment() -> Any:
    """The Jinja2 environment (autoescaping on)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["pvalue"] = _pvalue
    env.filters["esc"] = html.escape
    return env


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` with ``context``."""
    return environment().get_template(template).render(**context)


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if key in ("src", "href") and value:
                self.links.append(value)


def local_links(page: str | Path) -> list[str]:
    """Every ``src``/``href`` of an HTML page that is not an in-page anchor."""
    parser = _LinkParser()
    parser.feed(Path(page).read_text())
    return [link for link in parser.links if not link.startswith("#")]


def missing_links(page: str | Path) -> list[str]:
    """Links of ``page`` that do not resolve to a file relative to it; remote links count as
    missing (the reports must work offline)."""
    page = Path(page)
    missing = []
    for link in local_links(page):
        parsed = urlparse(link)
        if parsed.scheme or parsed.netloc or link.startswith("//"):
            missing.append(link)
            continue
        target = (page.parent / unquote(parsed.path)).resolve()
        if not target.is_file():
            missing.append(link)
    return missing
