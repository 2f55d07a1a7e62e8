"""Host name syntax, shared by the configuration and the probe."""

from __future__ import annotations

import re

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def is_host_name(text: str) -> bool:
    """Tell whether `text` is a DNS host name: labels of 1 to 63 letters,
    digits, hyphens or underscores, not starting or ending with a hyphen,
    the last label not all digits, 253 characters at most (RFC 1123,
    with the underscore that service names use)."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    return all(_LABEL.match(label) for label in labels) and not labels[-1].isdigit()
