"""How the reports write things: number formatting and the Doc block list that renders to Markdown
and to plain text.

A missing value prints as "n/a" (never NaN); table cells lose the characters that would break a
Markdown table ("|", newlines) and the word "nan".
"""
from __future__ import annotations

import math
import re

from mitoseg.core.scores import finite

NA = "n/a"


# --- formatting ----------------------------------------------------------------------------------
def f3(x, digits: int = 3) -> str:
    """A number with `digits` decimals."""
    return f"{float(x):.{digits}f}" if finite(x) else NA


def fg(x) -> str:
    """A number in its shortest form (learning rates, factor levels)."""
    return f"{float(x):g}" if finite(x) else NA


def fint(x) -> str:
    """A count, rounded to an integer."""
    return str(int(round(float(x)))) if finite(x) else NA


def fp(p) -> str:
    """A p-value as "p = 0.012" or "p < 0.001"."""
    if not finite(p):
        return NA
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def pct(a, b) -> str:
    """a / b as a whole percentage."""
    return f"{100.0 * a / b:.0f}%" if b else NA


def mean_sd_n(mean, sd, n, digits=3) -> str:
    """Mean, "+- sd SD" when the sd is known (a "+-" always says what it is), and "(n=N)"."""
    if not finite(mean):
        return NA
    s = f3(mean, digits)
    if finite(sd):
        s += f" +- {f3(sd, digits)} SD"
    return s + f" (n={fint(n)})"


def clean_text(text) -> str:
    """Free text (an error message) made safe for one table cell."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return ""
    text = re.sub(r"\bnan\b", "not-a-number", str(text), flags=re.IGNORECASE)
    return text.replace("|", "/").replace("\n", " ")


def cfg_text(row) -> str:
    """A configuration in words: "UNet (lr 0.001, batch 8)"."""
    return f"{row['architecture']} (lr {fg(row['learning_rate'])}, batch {fint(row['batch_size'])})"


def ci_text(lo, hi) -> str:
    """A 95 % interval in words, or why there is none."""
    return f"95 % CI {f3(lo)} to {f3(hi)}" if finite(lo) and finite(hi) else "no interval (fewer than 2 runs)"


# --- document blocks -----------------------------------------------------------------------------
class Doc:
    """The report as a list of blocks (heading, paragraph, list, table, image), rendered by
    markdown() and text(): one content, two formats."""

    def __init__(self):
        self.blocks = []

    def h(self, level, text):
        self.blocks.append(("h", level, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def ul(self, items):
        items = [i for i in items if i]
        if items:
            self.blocks.append(("ul", items))

    def table(self, headers, rows):
        self.blocks.append(("table", headers, [[clean_text(c) if isinstance(c, str) else str(c) for c in r] for r in rows]))

    def img(self, path, caption):
        self.blocks.append(("img", path, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "ul":
                out.append("\n".join(f"- {i}" for i in b[1]))
            elif b[0] == "table":
                lines = ["| " + " | ".join(b[1]) + " |", "|" + "|".join("---" for _ in b[1]) + "|"]
                lines += ["| " + " | ".join(r) + " |" for r in b[2]]
                out.append("\n".join(lines))
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
        return "\n\n".join(out) + "\n"

    def text(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                t = b[2].upper() if b[1] <= 2 else b[2]
                out.append(t + "\n" + ("=" if b[1] == 1 else "-") * len(t))
            elif b[0] == "p":
                out.append(b[1].replace("**", ""))
            elif b[0] == "ul":
                out.append("\n".join(f"  * {i.replace('**', '')}" for i in b[1]))
            elif b[0] == "table":
                widths = [max(len(str(x)) for x in [h] + [r[i] for r in b[2]]) for i, h in enumerate(b[1])]
                fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
                out.append("\n".join([fmt(b[1]), fmt(["-" * w for w in widths])] + [fmt(r) for r in b[2]]))
            elif b[0] == "img":
                out.append(f"[figure {b[1]}] {b[2]}")
        return "\n\n".join(out).replace("`", "") + "\n"
