"""The source a deploy sends for a Python function object."""

from __future__ import annotations

import ast
import builtins
import dis
import inspect
import textwrap
import types
from typing import Any, Callable, List, Optional, Set, Tuple


def function_source(fn: Callable[..., Any], name: Optional[str] = None) -> Tuple[str, str]:
    """`(function_name, function_code)` for `fn`: its source as written
    (`inspect.getsource`), dedented, without its decorators. The function
    runs remotely on its own, so it must be self-contained: imports inside
    its body, no variables of an enclosing function. With a `name` other
    than its own, the code also binds `name` to it.

    A decorated function is deployed as its undecorated source: a wrapper
    that says what it wraps (`__wrapped__`, as `functools.wraps` and
    `functools.cache` set) is unwrapped (`inspect.unwrap`), and what the
    decorator adds does not run remotely."""
    if hasattr(fn, "__wrapped__"):
        fn = inspect.unwrap(fn)
    if not inspect.isfunction(fn):
        raise TypeError(f"deploy takes a function defined with def, got {type(fn).__name__}")
    if fn.__name__ == "<lambda>":
        raise ValueError("a lambda cannot be deployed: define the function with def")
    if fn.__code__.co_freevars:
        wrapped = [
            cell.cell_contents.__name__
            for cell in fn.__closure__ or ()
            if _filled(cell) and inspect.isfunction(cell.cell_contents)
        ]
        hint = (
            f"; it looks like a decorator's wrapper (of {', '.join(wrapped)}): decorators are not "
            "deployed, so deploy the undecorated function, or have the decorator use "
            "functools.wraps so that deploy finds it"
            if wrapped
            else ""
        )
        raise ValueError(
            f"{fn.__qualname__} uses variables of an enclosing function "
            f"({', '.join(fn.__code__.co_freevars)}), which do not exist where it runs: "
            f"define it at module level or pass them as arguments{hint}"
        )
    outside = _module_names(fn)
    if outside:
        raise ValueError(
            f"{fn.__qualname__} uses names defined outside it ({', '.join(outside)}), which do not "
            "exist where it runs (only the function's own source is sent): import or define them "
            "inside the function, or pass them as arguments"
        )
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as e:
        raise ValueError(
            f"the source of {fn.__qualname__} is not available ({e}); "
            "deploy_function takes the code as a string instead"
        ) from e
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"the source of {fn.__qualname__} does not parse on its own: {e}") from e
    node = tree.body[0] if tree.body else None
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or node.name != fn.__name__:
        raise ValueError(f"the source of {fn.__qualname__} is not a def of it")
    # `lineno` is the `def` line's (decorators have their own lines above).
    code = "".join(source.splitlines(keepends=True)[node.lineno - 1:])
    if not code.endswith("\n"):
        code += "\n"
    function_name = name or fn.__name__
    if function_name != fn.__name__:
        code += f"\n\n{function_name} = {fn.__name__}\n"
    return function_name, code


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # an empty cell
        return False
    return True


def _module_names(fn: Any) -> List[str]:
    """The names of `fn`'s module (imports, helpers, constants) that its
    body reads as globals, its own name and builtins aside."""
    names: Set[str] = set()
    codes = [fn.__code__]
    while codes:
        code = codes.pop()
        for ins in dis.get_instructions(code):
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and isinstance(ins.argval, str):
                names.add(ins.argval)
        codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    names.discard(fn.__name__)
    builtin = vars(builtins)
    return sorted(n for n in names if n in fn.__globals__ and not (n in builtin and fn.__globals__[n] is builtin[n]))
