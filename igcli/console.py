"""The terminal: what the CLI prints, with text from users' files (post ids, usernames, column names, file
names, reject reasons, model ids) unable to act on the terminal.

``TerminalConsole`` is the CLI's rich console. Every string it prints, in a line, a table cell or a title,
passes through ``render_str``: markup and emoji codes are off there (``[/x]`` is shown, never parsed, so it
cannot raise ``MarkupError``), and ``for_terminal`` shows control, bidi and invisible characters as escapes
(``\\x1b``, ``\\u202e``) instead of letting them clear the screen, set the window title or reverse a name.
The CLI's own styling is rich ``Text`` with a style, never markup in a string that holds user text.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

# C0 controls but newline and tab, DEL and the C1 controls (0x9b is a one-byte CSI on some terminals).
_CONTROLS = [c for c in range(0x20) if c not in (0x09, 0x0A)] + list(range(0x7F, 0xA0))
# Bidi controls (they reorder what follows: a name shown reversed) and invisible characters (two ids that
# print alike): shown by code point.
_INVISIBLE = [0x00AD, 0x034F, 0x061C, 0x180E, *range(0x200B, 0x2010), *range(0x2028, 0x202F),
              *range(0x2060, 0x2065), *range(0x2066, 0x2070), 0xFEFF, *range(0xFFF9, 0xFFFC)]
_TABLE = {c: f"\\x{c:02x}" for c in _CONTROLS} | {c: f"\\u{c:04x}" for c in _INVISIBLE}


def for_terminal(text: str) -> str:
    """``text`` with control, bidi and invisible characters written as visible escapes."""
    return text.translate(_TABLE)


class TerminalConsole(Console):
    """A rich ``Console`` for text that may come from users' files (module docstring)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        super().__init__(**kwargs)

    def render_str(self, text: str, **kwargs) -> Text:
        return super().render_str(for_terminal(text), **kwargs)

    def styled(self, text: str, style: str) -> Text:
        """``text`` (ours or a user's) in ``style``, its characters made safe as ``render_str`` does."""
        return Text(for_terminal(text), style=style)
