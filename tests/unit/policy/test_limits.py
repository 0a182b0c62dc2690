"""Policy texts over the loader's limits (size, nesting, aliases, expanded nodes) are
refused with file, line and field, quickly and without building what they describe; texts
within them, anchors included, load as before. The server's parser (policydoc) keeps the
same limits. No privileges."""

from __future__ import annotations

from pathlib import Path

import pytest

from moray.api.policy import load
from moray.api.policy.load import PolicyError, load_file, load_text
from moray.controlplane.server.policydoc import PolicyDocError, parse_policies

HEAD = "apiVersion: moray/v1\nkind: RuntimePolicy\nmetadata: {name: p}\n"


def billion_laughs() -> str:
    """Nine levels of nine aliases each: 9^9 (387 million) strings once expanded."""
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        lines.append(f"{cur}: &{cur} [{', '.join(['*' + prev] * 9)}]")
    return HEAD + "spec:\n  scope: {host: true}\n  exec: {deny: [/bin/sh]}\n" \
        + "\n".join(lines) + "\n"


def problem(text: str) -> tuple[str, int, str, str]:
    with pytest.raises(PolicyError) as err:
        load_text(text, "hostile.yaml")
    p = err.value.problems[0]
    return p.file, p.line, p.field, p.message


def test_billion_laughs_refused_at_the_alias_that_crosses_the_limit() -> None:
    text = billion_laughs()
    file, line, field, message = problem(text)
    assert file == "hostile.yaml"
    assert f"more than {load.MAX_YAML_NODES} nodes" in message
    assert line > 4 and field[0] in "defghi"   # a late anchor's list


def test_too_many_aliases() -> None:
    aliases = ", ".join(["*p"] * (load.MAX_YAML_ALIASES + 1))
    text = HEAD + f"spec:\n  scope: {{host: true}}\n  exec: {{deny: [&p /bin/sh, {aliases}]}}\n"
    _, line, field, message = problem(text)
    assert message == f"more than {load.MAX_YAML_ALIASES} aliases"
    assert line == 6 and field == f"spec.exec.deny[{load.MAX_YAML_ALIASES + 1}]"


def test_too_deep() -> None:
    text = HEAD + "spec:\n  scope: " + "[" * 1000 + "]" * 1000 + "\n"
    _, line, field, message = problem(text)
    assert message == f"nested deeper than {load.MAX_YAML_DEPTH} levels"
    assert line == 5 and field.startswith("spec.scope[0][0]")


def test_too_large_text_and_file(tmp_path: Path) -> None:
    text = HEAD + "#" * load.MAX_POLICY_BYTES + "\n"
    assert problem(text)[1:] == (1, "<document>", f"larger than {load.MAX_POLICY_BYTES} bytes")
    path = tmp_path / "big.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as err:
        load_file(path)
    assert err.value.problems[0].message == f"larger than {load.MAX_POLICY_BYTES} bytes"
    # multi-byte characters count as bytes
    wide = HEAD + "#" + "é" * (load.MAX_POLICY_BYTES // 2) + "\n"
    assert problem(wide)[3] == f"larger than {load.MAX_POLICY_BYTES} bytes"


def test_anchors_within_the_limits_still_work() -> None:
    text = HEAD + ("spec:\n  scope: {host: true}\n  exec: {deny: &shells [/bin/sh, /bin/bash]}\n"
                   "  files: {deny: [{path: /etc/shadow, access: read}]}\n"
                   "---\n" + HEAD.replace("name: p", "name: q")
                   + "spec:\n  scope: {host: true}\n  exec: {deny: [/bin/dash]}\n")
    policies = load_text(text, "ok.yaml")
    assert [p.name for p in policies] == ["p", "q"]
    assert [r.text for r in policies[0].exec.deny] == ["/bin/sh", "/bin/bash"]


@pytest.mark.parametrize("text", [billion_laughs(),
                                  HEAD + "spec: " + "[" * 5000 + "]" * 5000 + "\n",
                                  HEAD + "#" * (2 * load.MAX_POLICY_BYTES)])
def test_server_parser_keeps_the_limits(text: str) -> None:
    with pytest.raises(PolicyDocError) as err:
        parse_policies(text, "api.yaml")
    assert err.value.file == "api.yaml" and err.value.line
    assert any(w in err.value.message for w in ("more than", "deeper", "larger than"))
