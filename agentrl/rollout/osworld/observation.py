"""Accessibility-tree observations as compact text.

OSWorld's server returns the accessibility tree as XML (``/accessibility`` → ``{"AT": xml}``),
with states, component geometry and text in namespaced attributes. Raw XML spends a small model's
context on markup, so :func:`linearize_a11y_tree` turns it into one tab-separated line per
element that has a name or text — ``tag  name  text  (x, y)  (w, h)`` — the table OSWorld's own
prompt agents use. Elements whose ``showing``/``visible`` state is ``false`` are left out.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

HEADER = "tag\tname\ttext\tposition (top-left x&y)\tsize (w&h)"
"""First line of the linearized tree."""

_HIDDEN_STATES = ("showing", "visible")


def _local(name: str) -> str:
    """``{namespace}local`` → ``local``."""
    return name.rsplit("}", 1)[-1]


def _attrs(element: ET.Element) -> dict[str, str]:
    return {_local(key): value for key, value in element.attrib.items()}


def linearize_a11y_tree(xml_text: str, max_chars: int) -> str:
    """The tree as a tab-separated table, cut to ``max_chars`` characters.

    Args:
        xml_text: OSWorld's accessibility XML.
        max_chars: longest result, in characters.

    Returns:
        The table (header first), or the raw text cut to ``max_chars`` when it is not XML.
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return xml_text[:max_chars]
    lines = [HEADER]
    size = len(HEADER)
    for element in root.iter():
        attrs = _attrs(element)
        if any(attrs.get(state) == "false" for state in _HIDDEN_STATES):
            continue
        name = attrs.get("name", "").strip()
        text = (element.text or "").strip().replace("\n", "\\n")
        if not name and not text:
            continue
        line = "\t".join([
            _local(element.tag), name, text[:200], attrs.get("screencoord", ""),
            attrs.get("size", ""),
        ])
        if size + len(line) + 1 > max_chars:
            break
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines)
