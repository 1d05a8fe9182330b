"""Read the Google-style field ``*args, **kwargs: text`` as two fields, ``*args`` and ``**kwargs``.

The package's docstrings describe the pass-through arguments of a function in one field,
``*args, **kwargs: the model's arguments.``; Napoleon's Google parser takes one name per field and
leaves the ``**`` of the second name as unbalanced emphasis.  This runs before Napoleon
(``autodoc-process-docstring``, priority 400 < Napoleon's 500) and splits the field.
"""
import re

__all__ = ["split_args_kwargs", "setup"]

FIELD = re.compile(r"^(\s+)\*args, \*\*kwargs: (.*)$")


def split_args_kwargs(app, what, name, obj, options, lines):
    """Rewrite every ``*args, **kwargs: text`` field of ``lines`` (in place) as two fields."""
    for i in reversed(range(len(lines))):
        match = FIELD.match(lines[i])
        if match:
            indent, text = match.groups()
            lines[i] = f"{indent}*args: {text}"
            end = i + 1
            while end < len(lines) and lines[end].startswith(indent + " ") and lines[end].strip():
                end += 1  # the description's continuation lines stay with *args
            lines.insert(end, f"{indent}**kwargs: keyword arguments, as ``*args``.")


def setup(app):
    app.connect("autodoc-process-docstring", split_args_kwargs, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
