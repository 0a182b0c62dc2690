"""Watched-prefix rows for mr_watch."""

from __future__ import annotations

from pathlib import Path

import pytest

from moray.agent.bpf import watch


def test_key_layout() -> None:
    k = watch.key("/etc/")
    assert len(k) == 260 and int.from_bytes(k[:4], "little") == 40 and k[4:9] == b"/etc/"


def test_build_ignore_overrides_watch() -> None:
    rows = watch.build(["/etc/"], ["/etc/ld.so.cache"])
    assert rows[watch.key("/etc/")] == 1 and rows[watch.key("/etc/ld.so.cache")] == 0


def test_too_long_prefix_rejected() -> None:
    with pytest.raises(ValueError):
        watch.key("/" + "a" * 300)


def test_ssh_dirs_from_passwd(tmp_path: Path) -> None:
    pw = tmp_path / "passwd"
    pw.write_text("root:x:0:0::/root:/bin/sh\nbin:x:2:2::/:/usr/sbin/nologin\n"
                  "ann:x:1000:1000::/home/ann/:/bin/sh\nbroken\n")
    assert watch.ssh_dirs(str(pw)) == ["/home/ann/.ssh/", "/root/.ssh/"]


def test_ancestors_are_the_proper_directory_prefixes_of_every_row() -> None:
    rows = watch.build(["/etc/", "/run/docker.sock", "/var/lib/kubelet/pods/"],
                       ["/etc/ld.so.conf.d/"])
    anc = watch.ancestors(rows)
    want = ["/", "/etc/", "/run/", "/var/", "/var/lib/", "/var/lib/kubelet/"]
    assert {k: v for k, v in anc.items()} == {watch.key(p): len(p) for p in want}
    # a watched directory is not its own ancestor (it is watched: never cached)
    assert watch.key("/var/lib/kubelet/pods/") not in anc
