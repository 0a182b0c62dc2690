"""Build hook: building the package compiles the CO-RE BPF objects (make -C bpf) and ships
them as package data (agent/bpf/objects/*.bpf.o). Compilation happens here, on the build
machine (clang, bpftool, libbpf-dev); target hosts only need libbpf1 and BTF (`make dist`,
docs/install.md).

The objects are built for one architecture (-D__TARGET_ARCH_x86 on x86_64), so the wheel is
tagged with the build machine's platform (py3-none-linux_x86_64), not as pure Python: pip
refuses it on an arm64 host instead of installing programs that cannot load there.

The one C extension, moray.agent._fast (agent/events/_fast.c: open records -> JSON lines,
agent/pipeline/fastopen.py), is optional: a build without a C compiler or Python headers
warns and goes on (setuptools' `optional=True`), and the agent then uses the same code path
in pure Python (fastopen.FAST is False)."""

import os
import subprocess
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70
    from wheel.bdist_wheel import bdist_wheel


class BuildWithBpf(build_py):
    def run(self) -> None:
        here = os.path.dirname(os.path.abspath(__file__))
        if not os.environ.get("MORAY_SKIP_BPF_BUILD"):
            subprocess.run(["make", "-C", os.path.join(here, "bpf")], check=True)
        super().run()


class PlatformWheel(bdist_wheel):
    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self) -> tuple[str, str, str]:
        plat = sysconfig.get_platform().replace("-", "_").replace(".", "_")
        return "py3", "none", plat


FAST = Extension("moray.agent._fast", sources=["agent/events/_fast.c"], optional=True,
                 extra_compile_args=["-O2", "-Wall", "-Wextra", "-fno-strict-aliasing"])

setup(cmdclass={"build_py": BuildWithBpf, "bdist_wheel": PlatformWheel}, ext_modules=[FAST])
