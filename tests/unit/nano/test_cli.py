"""`moray nano check|compile|layer` through the one `moray` command."""

from __future__ import annotations

import json
import zipfile

from moray.cli import main

GOOD = ("apiVersion: moray/v1\nkind: FunctionPolicy\nmetadata: {name: fn}\n"
        "spec: {network: {egress: {allow: ['*.amazonaws.com:443']}}}\n")


def test_check(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("egress", "ingress"))
    assert main(["nano", "check", str(good)]) == 0
    assert "good.yaml: ok: fn (enforce)" in capsys.readouterr().out
    assert main(["nano", "check", str(good), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "bad.yaml:4: spec.network.ingress: unknown field" in out


def test_compile_and_layer(tmp_path, capsys):
    src = tmp_path / "p.yaml"
    src.write_text(GOOD)
    assert main(["nano", "compile", str(src), "-o", str(tmp_path / "p.json")]) == 0
    compiled = json.loads((tmp_path / "p.json").read_text())
    assert compiled["egress"]["hosts"][0]["host"] == "*.amazonaws.com"
    assert main(["nano", "layer", str(tmp_path / "l.zip"), "--policy", str(src)]) == 0
    assert "AWS_LAMBDA_EXEC_WRAPPER=/opt/moray-nano" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "l.zip") as z:
        names = z.namelist()
        assert json.loads(z.read("moray-nano.d/policy.json")) == compiled
        assert (z.getinfo("moray-nano").external_attr >> 16) & 0o777 == 0o755
    assert "moray-nano.d/sitecustomize.py" in names
    assert "moray-nano.d/moray/nano/hook.py" in names
    assert not any(n.endswith(("policy.py", "cli.py", "layer.py")) for n in names)
    # reproducible: the same policy gives the same bytes
    main(["nano", "layer", str(tmp_path / "l2.zip"), "--policy", str(src)])
    assert (tmp_path / "l.zip").read_bytes() == (tmp_path / "l2.zip").read_bytes()


def test_a_broken_policy_is_one_line_and_exit_2(tmp_path, capsys):
    src = tmp_path / "p.yaml"
    src.write_text("kind: [")
    assert main(["nano", "layer", str(tmp_path / "l.zip"), "--policy", str(src)]) == 2
    assert "not YAML/JSON" in capsys.readouterr().err
    assert not (tmp_path / "l.zip").exists()
