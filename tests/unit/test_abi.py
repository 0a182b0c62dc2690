"""Every Python mirror in agent/bpf/abi.py matches its C struct in the built object's BTF
(offsets and sizes of every member), and the opcode enum matches. No privileges needed."""

from __future__ import annotations

import pytest

from moray.agent.bpf import abi
from moray.agent.bpf.btf import Btf
from moray.agent.bpf.loader import object_path


@pytest.fixture(scope="module")
def btf() -> Btf:
    return Btf(str(object_path("moray.bpf.o")))


@pytest.mark.parametrize("layout", abi.ALL, ids=lambda lay: lay.c_name)
def test_layout_matches_btf(btf: Btf, layout: abi.Layout) -> None:
    size, members = btf.struct_members(layout.c_name)
    assert size == layout.size, f"{layout.c_name}: C size {size}, Python {layout.size}"
    c_fields = [(m.name, m.offset) for m in members if m.size or m.name != "data"]
    py_fields = [(name, layout.offsets[name]) for name, _ in layout.members]
    assert py_fields == c_fields
    for m in members:
        if m.name in layout.offsets and m.size:
            code = dict(layout.members)[m.name]
            width = code.size if isinstance(code, abi.Layout) else _width(code)
            assert width == m.size, f"{layout.c_name}.{m.name}: C {m.size} bytes, Python {width}"


def _width(code: str) -> int:
    import struct

    return struct.calcsize("<" + code)


def test_opcodes_match(btf: Btf) -> None:
    c = btf.enum_values("mr_op")
    assert {k.removeprefix("MR_OP_"): v for k, v in c.items()} == {o.name: o.value
                                                                   for o in abi.Op}


def test_stat_indexes_match(btf: Btf) -> None:
    c = btf.enum_values("mr_stat")
    for s in abi.Stat:
        assert c[f"MR_STAT_{s.name}"] == s.value


def test_rodata_settings_exist(btf: Btf) -> None:
    names = btf.datasec_vars(".rodata")
    assert {"cfg_self_tgid", "cfg_args_max", "cfg_watch_proc_mem"} <= set(names)
