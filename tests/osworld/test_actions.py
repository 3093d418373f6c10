"""parse_action on a table of model outputs (fenced and unfenced code, WAIT/DONE/FAIL, malformed),
and the accessibility tree as text."""

from __future__ import annotations

import pytest

from agentrl.rollout.osworld import parse_action
from agentrl.rollout.osworld.observation import HEADER, linearize_a11y_tree

CLICK = "pyautogui.click(100, 200)"

# (model output, expected code, expected special, malformed)
TABLE: list[tuple[str, str | None, str | None, bool]] = [
    (f"```python\n{CLICK}\n```", CLICK, None, False),
    (f"```py\n{CLICK}\n```", CLICK, None, False),
    (f"```\n{CLICK}\n```", CLICK, None, False),
    (f"I will click OK.\n```python\n{CLICK}\n```\nThis opens the dialog.", CLICK, None, False),
    (f"```python\nimport pyautogui\n{CLICK}\ntime.sleep(0.5)\n```",
     f"import pyautogui\n{CLICK}\ntime.sleep(0.5)", None, False),
    ("```python\npyautogui.hotkey('ctrl', 's')\n```\n```python\npyautogui.press('enter')\n```",
     "pyautogui.hotkey('ctrl', 's')\n\npyautogui.press('enter')", None, False),
    (CLICK, CLICK, None, False),
    (f"Let me click the button.\n{CLICK}\nThat should work.", CLICK, None, False),
    ("import pyautogui\npyautogui.write('hi')", "import pyautogui\npyautogui.write('hi')", None,
     False),
    ("DONE", None, "DONE", False),
    ("FAIL", None, "FAIL", False),
    ("WAIT", None, "WAIT", False),
    ("```DONE```", None, "DONE", False),
    ("```\nFAIL\n```", None, "FAIL", False),
    ("`WAIT`", None, "WAIT", False),
    ("The file is saved, so the task is DONE.", None, "DONE", False),
    (f"```python\n{CLICK}\n```\n```DONE```", CLICK, "DONE", False),
    (f"{CLICK}\nDONE", CLICK, "DONE", False),
    ("", None, None, True),
    ("   \n ", None, None, True),
    ("I am not sure what to do here.", None, None, True),
    ("```python\npyautogui.click(100, \n```", None, None, True),
    ("```python\n```", None, None, True),
    ("```json\n{\"action\": \"click\"}\n```", None, None, True),
    ("pyautogui.click(100, 200", None, None, True),
    ("<|im_end|>", None, None, True),
]


def test_table_is_large_enough() -> None:
    assert len(TABLE) >= 20


@pytest.mark.parametrize(("text", "code", "special", "malformed"), TABLE)
def test_parse_action(text: str, code: str | None, special: str | None, malformed: bool) -> None:
    action = parse_action(text)
    assert (action.code, action.special, action.malformed) == (code, special, malformed)
    assert action.raw == text
    if malformed:
        assert action.error
        assert action.summary().startswith("MALFORMED")
    assert action.ends_episode == (special in ("DONE", "FAIL"))


def test_a11y_tree_becomes_a_table() -> None:
    xml = (
        '<desktop-frame xmlns:st="https://accessibility.ubuntu.example.org/ns/state" '
        'xmlns:cp="https://accessibility.ubuntu.example.org/ns/component">'
        '<application name="gedit"><push-button name="Save" st:showing="true" '
        'cp:screencoord="(10, 20)" cp:size="(80, 30)"/>'
        '<label name="Hidden" st:showing="false"/><paragraph>Hello\nworld</paragraph>'
        '<filler/></application></desktop-frame>'
    )
    assert linearize_a11y_tree(xml, 1000).splitlines() == [
        HEADER,
        "application\tgedit\t\t\t",
        "push-button\tSave\t\t(10, 20)\t(80, 30)",
        "paragraph\t\tHello\\nworld\t\t",
    ]
    assert len(linearize_a11y_tree(xml, 120)) <= 120
    assert linearize_a11y_tree("not xml at all", 5) == "not x"
