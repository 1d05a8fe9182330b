"""Check of the keyword arguments an evaluation function passes on to the model and the guide.

The evaluation functions take ``(model, guide, *args, <options>, **kwargs)`` and forward ``kwargs``
to both.  A misspelt option (``num_steps=`` for ``steps=``) would otherwise reach the model and fail
deep inside a trace with ``model() got an unexpected keyword argument``; :func:`check_model_kwargs`
catches it first and names the bad argument, the function's own options and the model's keyword
arguments.

Example:
    >>> def model(x, scale=1.0):
    ...     pass
    >>> def evaluate(model, guide, *args, steps=10, **kwargs):
    ...     check_model_kwargs(evaluate, model, kwargs)
    >>> evaluate(model, model, 1.0, scale=2.0)  # a model argument: passed on
    >>> evaluate(model, model, 1.0, num_steps=5)
    Traceback (most recent call last):
        ...
    TypeError: evaluate() got an unexpected keyword argument 'num_steps' (did you mean 'steps'?); ...
"""
import difflib
import inspect

import torch

__all__ = ["check_model_kwargs"]


def _keyword_names(fn):
    """The names ``fn`` accepts by keyword, or ``None`` if it accepts any (``**kwargs``) or is opaque."""
    if isinstance(fn, torch.nn.Module):
        fn = fn.forward
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins and other callables without a signature: cannot tell
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_model_kwargs(caller, model, kwargs):
    """Raise ``TypeError`` for a keyword argument that neither ``caller`` nor ``model`` accepts.

    ``caller``'s options are its keyword-only parameters (those after ``*args``); a model that takes
    ``**kwargs``, or whose signature cannot be read, accepts every keyword.

    Args:
        caller (callable): the evaluation function (its name and options go into the message).
        model (callable): the model the remaining keyword arguments are passed to.
        kwargs (dict): those remaining keyword arguments.
    """
    if not kwargs:
        return
    accepted = _keyword_names(model)
    if accepted is None:
        return
    unknown = [name for name in kwargs if name not in accepted]
    if not unknown:
        return
    options = [
        p.name for p in inspect.signature(caller).parameters.values() if p.kind is p.KEYWORD_ONLY
    ]
    name = unknown[0]
    close = difflib.get_close_matches(name, options + accepted, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise TypeError(
        f"{caller.__name__}() got an unexpected keyword argument {name!r}{hint}; its options are "
        f"{options}, and the model takes the keyword arguments {accepted}"
    )
