"""The libbpf loader against the real kernel: verifier errors name the program and carry
the log; map operations; pinning in bpffs; const volatile settings reach the program."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from moray.agent.bpf.loader import BpfLoadError, BpfObject, ensure_bpffs

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

INCLUDE = Path(__file__).resolve().parents[2] / "bpf" / "include"

SRC = r"""
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
char LICENSE[] SEC("license") = "GPL";
const volatile __u32 cfg_value = 7;
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16);
         __type(key, __u32); __type(value, __u64); } t_hash SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
         __type(key, __u32); __type(value, __u32); } t_out SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int good_prog(void *ctx)
{
	__u32 k = 0, v = cfg_value;
	bpf_map_update_elem(&t_out, &k, &v, BPF_ANY);
	return 0;
}
#ifdef MORAY_TEST_BAD
SEC("tracepoint/syscalls/sys_enter_getpid")
int bad_prog(void *ctx)
{
	/* a random number used as a pointer: "invalid mem access 'scalar'" */
	return *(volatile int *)(unsigned long)bpf_get_prandom_u32();
}
#endif
"""


def build(tmp: Path, bad: bool) -> Path:
    src = tmp / "t.bpf.c"
    src.write_text(SRC)
    out = tmp / ("bad.o" if bad else "good.o")
    cmd = ["clang", "-g", "-O2", "-target", "bpf", "-I", str(INCLUDE), "-c", str(src), "-o",
           str(out)]
    if bad:
        cmd.insert(1, "-DMORAY_TEST_BAD")
    subprocess.run(cmd, check=True)
    return out


def test_verifier_error_names_program_and_carries_log(tmp_path: Path) -> None:
    obj = BpfObject.open(build(tmp_path, bad=True))
    try:
        with pytest.raises(BpfLoadError) as info:
            obj.load()
        err = info.value
        assert err.program == "bad_prog"
        assert "invalid mem access" in err.log
        assert "bad_prog" in str(err)
    finally:
        obj.close()


def test_settings_maps_and_pins(tmp_path: Path) -> None:
    obj = BpfObject.open(build(tmp_path, bad=False))
    try:
        obj.set_rodata({"cfg_value": 42})
        with pytest.raises(KeyError):
            obj.set_rodata({"no_such_setting": 1})
        obj.load()
        obj.attach_all(None)
        os.getppid()
        out = obj.map("t_out").lookup((0).to_bytes(4, "little"))
        assert out is not None and int.from_bytes(out, "little") == 42

        h = obj.map("t_hash")
        for i in range(5):
            h.update(i.to_bytes(4, "little"), (i * 10).to_bytes(8, "little"))
        assert sorted(int.from_bytes(k, "little") for k in h.keys())  # noqa: SIM118 (BpfMap is not a dict) == [0, 1, 2, 3, 4]
        assert h.delete((3).to_bytes(4, "little")) and not h.delete((3).to_bytes(4, "little"))
        assert h.lookup((3).to_bytes(4, "little")) is None
        assert dict(h.items())[(4).to_bytes(4, "little")] == (40).to_bytes(8, "little")
        with pytest.raises(ValueError):
            h.update(b"\0", b"\0" * 8)

        assert ensure_bpffs()
        pin_dir = Path("/sys/fs/bpf") / f"moray-test-{os.getpid()}"
        try:
            pin_dir.mkdir()
            h.pin(str(pin_dir / "t_hash"))
            obj.pin_links(str(pin_dir / "links"))
            assert (pin_dir / "t_hash").exists() and (pin_dir / "links" / "good_prog").exists()
        finally:
            for p in sorted(pin_dir.rglob("*"), reverse=True):
                p.unlink() if not p.is_dir() else p.rmdir()
            pin_dir.rmdir()
    finally:
        obj.close()
