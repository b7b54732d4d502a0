"""List the functions in src/ over the style's limits (~50 lines with the docstring, 8 parameters).

    python scripts/check_units.py          # the list, longest first; exit 1 if any exceeds
    python scripts/check_units.py --count  # just how many

Command-line verbs (``@app.command``) are counted apart: a verb's parameters are its options,
declared for Typer. What is left over the limits (2026-12-06): the Jacobian engines, whose
signature is one convention (denoiser, x, sigma, cond, then keyword options: target, channels,
chunk size), ``evaluate_denoiser`` and the exact toy's constructor (its distribution's parameters).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_LINES, MAX_PARAMS = 50, 8
SRC = Path(__file__).resolve().parents[1] / "src" / "locodiff"


def parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    return len([n for n in names if n not in ("self", "cls")])


def is_verb(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(isinstance(d, ast.Call) and getattr(d.func, "attr", None) == "command" for d in fn.decorator_list)


def oversized(verbs: bool = False) -> list[tuple[int, int, str]]:
    """Functions over the limits: the command-line verbs when ``verbs``, else every other one."""
    rows = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and is_verb(node) == verbs:
                lines, params = node.end_lineno - node.lineno + 1, parameters(node)
                if lines > MAX_LINES or params > MAX_PARAMS:
                    rows.append((lines, params, f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)


if __name__ == "__main__":
    rows = oversized()
    if "--count" in sys.argv:
        print(len(rows))
    else:
        for lines, params, where in rows:
            print(f"{lines:4d} lines {params:3d} params  {where}")
        print(f"(and {len(oversized(verbs=True))} command-line verbs with more than {MAX_PARAMS} options)")
    sys.exit(1 if rows else 0)
