"""Text from data or a store made safe for terminals and Markdown (tasks/shown_text.py)."""

from __future__ import annotations

from tasks.shown_text import for_markdown, for_terminal, for_terminal_lines


def test_control_characters_are_escaped_and_printable_text_kept():
    assert for_terminal("vit-small é 猫 ok") == "vit-small é 猫 ok"
    hostile = "evil\x1b]0;TITLE\x07\x1b[2J\x1b[31mRED\nfake line\u202egnp.exe\u200b\x9b"
    shown = for_terminal(hostile)
    assert shown == "evil\\x1b]0;TITLE\\x07\\x1b[2J\\x1b[31mRED\\nfake line\\u202egnp.exe\\u200b\\x9b"
    assert shown.isprintable() and for_terminal(7) == "7"
    # spaces and joiners are text: a no-break space, an ideographic space, an emoji ZWJ sequence
    for text in ("10\u00a0km", "東京\u3000駅", "\U0001f469\u200d\U0001f4bb woman technologist"):
        assert for_terminal(text) == text


def test_markdown_syntax_is_inert():
    text = "boom <img src=x onerror=alert(1)> [click](https://evil.example) | x | ![i](u) `c` *b* a_b"
    shown = for_markdown(text)
    for escaped in ("\\<img", "\\[click\\]\\(", "\\| x \\|", "\\!\\[i\\]", "\\`c\\`", "\\*b\\*", " a_b"):
        assert escaped in shown, escaped
    # every escape is a backslash before the character: removing them gives the text back
    assert shown.replace("\\", "") == text.replace("\\", "")
    assert for_markdown("x\x1b[2Jy") == "x\\\\x1b\\[2Jy"


def test_a_message_over_several_lines_keeps_its_breaks_and_nothing_else():
    assert for_terminal_lines("2 problems:\n  a\x1b[2J\n  b\r") == "2 problems:\n  a\\x1b[2J\n  b\\r"
    assert for_terminal_lines(ValueError("one")) == "one"
