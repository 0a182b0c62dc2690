// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* No programs: puts every ABI type into the object's BTF (clang emits BTF only for types
 * that globals, function signatures or CO-RE relocations use), so user space can check
 * its mirror (agent/bpf/abi.py, tests/unit/test_abi.py) against the built object. */
#include "../lib/common.h"

/* Whole structs, not pointers: a pointer's target is emitted only as a forward decl. */
__weak struct mr_hdr mr_abi_hdr __attribute__((unused));
__weak struct mr_proc mr_abi_proc __attribute__((unused));
__weak struct mr_exec mr_abi_exec __attribute__((unused));
__weak struct mr_fork mr_abi_fork __attribute__((unused));
__weak struct mr_exit mr_abi_exit __attribute__((unused));
__weak struct mr_open mr_abi_open __attribute__((unused));
__weak struct mr_net mr_abi_net __attribute__((unused));
__weak struct mr_cgroup mr_abi_cgroup __attribute__((unused));
__weak struct mr_watch_key mr_abi_watch_key __attribute__((unused));
__weak struct mr_enforce mr_abi_enforce __attribute__((unused));
__weak struct mr_sysobs mr_abi_sysobs __attribute__((unused));
__weak struct mr_repeat mr_abi_repeat __attribute__((unused));
__weak enum mr_ekind mr_abi_ekind __attribute__((unused));
__weak enum mr_eaction mr_abi_eaction __attribute__((unused));
__weak enum mr_op mr_abi_op __attribute__((unused));
__weak enum mr_stat mr_abi_stat __attribute__((unused));
