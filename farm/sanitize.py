"""Make untrusted guest text storable.

A guest kernel can print anything, and PostgreSQL refuses NUL characters and
lone surrogates in text and JSONB: unless they are replaced, a hostile guest
could make its own result unrecordable and have Celery redeliver it forever.
Shared by the recorder and the findings, which store text derived from it.
"""

from __future__ import annotations

from typing import Any


def clean_text(text: str) -> str:
    """Text PostgreSQL accepts: no NUL characters, no lone surrogates."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def clean_json(value: Any) -> Any:
    """clean_text over every key and string of a JSON value (JSONB refuses \\u0000 too)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value
