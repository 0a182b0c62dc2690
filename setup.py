"""Build hook: installing the package compiles the CO-RE BPF objects (make -C bpf) and
ships them as package data (agent/bpf/objects/*.bpf.o). Compilation happens here, on the
build machine (clang, bpftool, libbpf-dev); target hosts only need libbpf1 and BTF."""

import os
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithBpf(build_py):
    def run(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        if not os.environ.get("MORAY_SKIP_BPF_BUILD"):
            subprocess.run(["make", "-C", os.path.join(here, "bpf")], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithBpf})
