"""Plain-text tables whose columns fit their widest cell, so long station ids and model tags stay aligned."""

from __future__ import annotations

from collections.abc import Sequence


def format_table(rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None, indent: str = "",
                 gap: str = "  ") -> str:
    """``rows[0]`` is the header; ``right[i]`` right-aligns column ``i`` (numbers). Trailing blanks are cut."""
    n = max(len(r) for r in rows)
    cells = [[str(c) for c in r] + [""] * (n - len(r)) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(n)]
    right = list(right or [False] * n) + [False] * n
    lines = []
    for r in cells:
        parts = [c.rjust(w) if right[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append((indent + gap.join(parts)).rstrip())
    return "\n".join(lines)
