"""Checks on single configuration values that both configuration files share.

Owns what a value may contain before anything else sees it: no control
characters, valid UTF-8, paths that are absolute and fit the kernel's limits,
kernel release names, and words that split like the shell splits them. Each
check returns the sentence to show (or None), so the parsers attach their own
``file:line``. Values that pass here can be rendered into shell, JSON and unit
files without changing meaning.
"""

from __future__ import annotations

import re
import shlex

#: The kernel's limits on one path component (NAME_MAX) and a whole path (PATH_MAX - 1).
NAME_MAX = 255
PATH_MAX = 4095

# uname -r as kernels and distributions spell it; nothing a shell or unit file treats specially.
_RELEASE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]*")
_RELEASE_MAX = 64  # the kernel's __NEW_UTS_LEN


def text_problem(value: str, *, allow_tab: bool = True) -> str | None:
    """Why ``value`` cannot be a configuration value: a control character or bytes not UTF-8."""
    for char in value:
        code = ord(char)
        if char == "\t" and allow_tab:
            continue
        if code < 0x20 or code == 0x7F:
            name = "a NUL byte" if code == 0 else f"the control character {char!r}"
            return f"contains {name}; remove it (values are plain text on one line)"
        if char.isspace() and char not in " \t":
            # U+0085, U+2028...: Python's str.split() and the shell disagree on them, so
            # a value could split into different words at different places.
            return f"contains the white-space character U+{code:04X}; use plain spaces"
        if 0xD800 <= code <= 0xDFFF:
            # read with errors="surrogateescape": a byte that is not UTF-8.
            return "is not valid UTF-8; write the value as UTF-8 text"
    return None


def path_problem(value: str, *, what: str, absolute: bool = True) -> str | None:
    """Why ``value`` cannot be a path of the managed system, or None.

    ``absolute=False`` accepts a path relative to a target's root (kdump.conf's
    ``path``, which kdump-utils appends to the target's mount point).
    """
    problem = text_problem(value, allow_tab=False)
    if problem is not None:
        return f"{what} {value!r} {problem}"
    if absolute and not value.startswith("/"):
        return f"{what} {value!r} is not an absolute path; write it starting with /"
    encoded = value.encode("utf-8")
    if len(encoded) > PATH_MAX:
        return f"{what} is {len(encoded)} bytes long; a path may have at most {PATH_MAX}"
    for part in value.split("/"):
        size = len(part.encode("utf-8"))
        if size > NAME_MAX:
            return (
                f"{what} has a component of {size} bytes ({part[:20]}...); a file name may "
                f"have at most {NAME_MAX} bytes"
            )
    return None


def words_problem(value: str, *, what: str) -> str | None:
    """Why ``value`` does not split into words as a shell would (an unbalanced quote), or None."""
    try:
        shlex.split(value)
    except ValueError as exc:
        return f"{what} cannot be split into words ({exc}); close every quote"
    return None


def release_problem(value: str, *, what: str) -> str | None:
    """Why ``value`` is not a kernel release name (``uname -r``), or None."""
    if _RELEASE.fullmatch(value) and len(value) <= _RELEASE_MAX:
        return None
    return (
        f"{what} {value!r} is not a kernel release name (letters, digits and . _ + ~ -, "
        f"at most {_RELEASE_MAX} characters, as uname -r prints it)"
    )


def file_name_problem(value: str, *, what: str) -> str | None:
    """Why ``value`` cannot be a single file name (no /, fits NAME_MAX), or None."""
    problem = text_problem(value, allow_tab=False)
    if problem is not None:
        return f"{what} {value!r} {problem}"
    if "/" in value or value in (".", ".."):
        return f"{what} {value!r} must be a file name, not a path"
    if len(value.encode("utf-8")) > NAME_MAX:
        return f"{what} is longer than {NAME_MAX} bytes"
    return None
