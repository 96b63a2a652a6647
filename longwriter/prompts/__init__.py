"""Every prompt the pipeline sends, one template file per prompt: ``longwriter/prompts/<name>.txt``.

``load_prompt(name)`` gives a template's text, ``render_prompt(name, **fields)`` the prompt exactly as it is sent.
Edit the ``.txt`` files to change what a model is asked; the code only fills in the fields.

Template syntax
    ``{field}`` (a name of letters, digits and underscores, not starting with a digit) is replaced by the value
    given for ``field`` (``str(value)``). Every other brace is text, so JSON examples are written as they are
    sent: ``{"analysis": ..., "better": "A"}`` needs no escaping. To send a literal ``{field}`` (a brace pair
    around a bare name), write ``{{field}}``; it renders as ``{field}``. Substitution is one pass: braces inside
    a value are never read as fields.

    A field missing from ``render_prompt``'s arguments and an argument the template does not use are both
    errors (``ValueError`` naming the template and the field), so a template and its call site cannot drift
    apart unnoticed.

    The file's final newline is not part of the template (editors add one): a prompt that must end in a newline
    has its file end in two.

Naming contract
    Call sites pass the name as a string literal, ``render_prompt("plan", ...)``: a stage's ``dvc.yaml`` deps
    list the template files its modules name, found with the regex
    ``(?:render_prompt|load_prompt)\\(\\s*["']([\\w-]+)["']``. Never compute a name.

Conditional pieces of a prompt (the plan's total-length rule, the write prompt's text written so far) are
templates of their own, rendered by the code that decides whether they apply and passed in as a field.
``tests/test_prompts.py`` renders each template for a fixed input and compares it byte for byte with
``tests/golden/prompts/<name>.txt`` (the response cache is keyed on the request bytes).
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["load_prompt", "render_prompt"]

_NAME = re.compile(r"[\w-]+")
# an escaped field ``{{name}}`` first, then a field ``{name}``
_FIELD = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


@functools.cache
def load_prompt(name: str) -> str:
    """The text of template ``name`` (``longwriter/prompts/<name>.txt``), without the file's final newline."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"prompt template name {name!r}: use letters, digits, '_' and '-' only")
    path = resources.files(__name__).joinpath(f"{name}.txt")
    if not path.is_file():
        known = sorted(p.name[:-4] for p in resources.files(__name__).iterdir() if p.name.endswith(".txt"))
        raise ValueError(f"no prompt template {name!r} (longwriter/prompts/{name}.txt); there are: "
                         f"{', '.join(known)}")
    text = path.read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def render_prompt(name: str, **fields: object) -> str:
    """Template ``name`` with its fields filled in: the prompt exactly as sent.

    Raises ``ValueError`` naming the template and the field when a field of the template is not given or a
    given field is not in the template."""
    template = load_prompt(name)
    used = {m.group(2) for m in _FIELD.finditer(template) if m.group(2)}
    missing = sorted(used - fields.keys())
    if missing:
        raise ValueError(f"prompt template {name!r} (longwriter/prompts/{name}.txt): field "
                         f"{', '.join('{' + f + '}' for f in missing)} not given")
    unused = sorted(fields.keys() - used)
    if unused:
        raise ValueError(f"prompt template {name!r} (longwriter/prompts/{name}.txt) has no field "
                         f"{', '.join('{' + f + '}' for f in unused)}")

    def fill(m: re.Match[str]) -> str:
        return "{" + m.group(1) + "}" if m.group(1) else str(fields[m.group(2)])

    return _FIELD.sub(fill, template)
