// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/*
 * Syscalls the detection rules (agent/detect) look at, reported with their result so a
 * failed attempt (EPERM in an unprivileged container) counts: sys_enter saves the
 * arguments (mr_sys_args) when the call is worth reporting, sys_exit writes one mr_sysobs.
 *
 * Always reported: ptrace, mount, umount2, unshare, setns, init_module, finit_module,
 * memfd_create, process_vm_readv, process_vm_writev. Filtered in the kernel: chmod family
 * only with setuid/setgid bits; setxattr family only for security.capability; link/symlink
 * only to a watched target (mr_watch, as written), symlink also when its new name is
 * watched; utimensat only with explicit times on a watched path; unlink/rename only of a
 * watched path; socket only AF_PACKET or inet SOCK_RAW; dup2/dup3 only onto fd 0-2 of an
 * inet socket; connect only to a unix socket whose path is watched (runtime sockets);
 * open/openat only for writing a file named release_agent (checked by progs/file.bpf.c,
 * which reads that path anyway). At exec (sched_process_exec): a record only when fd 0, 1
 * or 2 is an inet socket, the binary is on an overlayfs upper layer / tmpfs (not in the
 * image), or fd 0 is a pipe and the binary is a shell or a script interpreter (by file name)
 * (`curl | sh`); arg0 is then bprm->argc. Observation only: nothing is denied here.
 */
#include "../lib/sysobs.h"

#ifndef S_IFIFO
#define S_IFIFO 0010000
#endif

static __always_inline int is_cap_xattr(__u64 uname)
{
	char n[20] = {};

	if (bpf_probe_read_user_str(n, sizeof(n), (void *)uname) != 20)
		return 0; /* "security.capability" is 19 bytes + NUL */
	return n[0] == 's' && n[8] == '.' && n[9] == 'c' && n[10] == 'a' && n[11] == 'p' &&
	       n[18] == 'y' && n[1] == 'e' && n[2] == 'c';
}

#define ENTER_ALWAYS(name, NR)                                                        \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                  \
	int mr_so_in_##name(struct trace_event_raw_sys_enter *ctx) { return save(NR, ctx); }

ENTER_ALWAYS(ptrace, NR_PTRACE)
ENTER_ALWAYS(mount, NR_MOUNT)
ENTER_ALWAYS(umount, NR_UMOUNT2)
ENTER_ALWAYS(unshare, NR_UNSHARE)
ENTER_ALWAYS(setns, NR_SETNS)
ENTER_ALWAYS(memfd_create, NR_MEMFD_CREATE)
ENTER_ALWAYS(process_vm_readv, NR_PROCESS_VM_READV)
ENTER_ALWAYS(process_vm_writev, NR_PROCESS_VM_WRITEV)

#define ENTER_IF(name, NR, cond)                                                      \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                  \
	int mr_so_in_##name(struct trace_event_raw_sys_enter *ctx)                    \
	{                                                                             \
		if (!(cond))                                                          \
			return 0;                                                     \
		return save(NR, ctx);                                                 \
	}

#define A(i) (ctx->args[i])
ENTER_IF(chmod, NR_CHMOD, A(1) & (S_ISUID | S_ISGID))
ENTER_IF(fchmod, NR_FCHMOD, A(1) & (S_ISUID | S_ISGID))
ENTER_IF(fchmodat, NR_FCHMODAT, A(2) & (S_ISUID | S_ISGID))
ENTER_IF(fchmodat2, NR_FCHMODAT2, A(2) & (S_ISUID | S_ISGID))
ENTER_IF(setxattr, NR_SETXATTR, is_cap_xattr(A(1)))
ENTER_IF(lsetxattr, NR_LSETXATTR, is_cap_xattr(A(1)))
ENTER_IF(fsetxattr, NR_FSETXATTR, is_cap_xattr(A(1)))
ENTER_IF(link, NR_LINK, watched((const char *)A(0)))
ENTER_IF(linkat, NR_LINKAT, watched((const char *)A(1)))
/* a symlink to a watched target, or a watched name replaced by a symlink (a shell history
 * pointed at /dev/null) */
ENTER_IF(symlink, NR_SYMLINK, watched((const char *)A(0)) || watched((const char *)A(1)))
ENTER_IF(symlinkat, NR_SYMLINKAT, watched((const char *)A(0)) || watched((const char *)A(2)))
ENTER_IF(unlink, NR_UNLINK, watched((const char *)A(0)))
ENTER_IF(unlinkat, NR_UNLINKAT, watched((const char *)A(1)))
ENTER_IF(rename, NR_RENAME, watched((const char *)A(0)))
ENTER_IF(renameat, NR_RENAMEAT, watched((const char *)A(1)))
ENTER_IF(renameat2, NR_RENAMEAT2, watched((const char *)A(1)))
ENTER_IF(socket, NR_SOCKET, A(0) == AF_PACKET ||
	 ((A(0) == AF_INET || A(0) == AF_INET6) && (A(1) & 0xf) == SOCK_RAW))
ENTER_IF(dup2, NR_DUP2, A(1) <= 2)
ENTER_IF(connect, NR_CONNECT, unix_watched(A(1), A(2)))
ENTER_IF(dup3, NR_DUP3, A(1) <= 2)
/* utimensat times: NULL, or both tv_nsec UTIME_NOW / UTIME_OMIT, is plain `touch`
 * ("now"); anything else sets a chosen time (touch -d / -r, cp -p, tar) */
#define UTIME_NOW ((1l << 30) - 1l)
#define UTIME_OMIT ((1l << 30) - 2l)
static __always_inline int explicit_times(__u64 utimes)
{
	__s64 t[4] = {};

	if (!utimes || bpf_probe_read_user(t, sizeof(t), (void *)utimes))
		return 0;
	return (t[1] != UTIME_NOW && t[1] != UTIME_OMIT) ||
	       (t[3] != UTIME_NOW && t[3] != UTIME_OMIT);
}

/* explicit times on a watched path as written; futimens (path NULL, an fd: GNU touch)
 * is not seen */
ENTER_IF(utimensat, NR_UTIMENSAT, explicit_times(A(2)) && watched((const char *)A(1)))


#define EXIT(name)                                                                    \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                   \
	int mr_so_out_##name(struct trace_event_raw_sys_exit *ctx) { return sysobs_exit(ctx->ret); }

EXIT(ptrace)
EXIT(mount)
EXIT(umount)
EXIT(unshare)
EXIT(setns)
EXIT(memfd_create)
EXIT(process_vm_readv)
EXIT(process_vm_writev)
EXIT(utimensat)
EXIT(chmod)
EXIT(fchmod)
EXIT(fchmodat)
EXIT(fchmodat2)
EXIT(setxattr)
EXIT(lsetxattr)
EXIT(fsetxattr)
EXIT(link)
EXIT(linkat)
EXIT(symlink)
EXIT(symlinkat)
EXIT(unlink)
EXIT(unlinkat)
EXIT(rename)
EXIT(renameat)
EXIT(renameat2)
EXIT(socket)
EXIT(dup2)
EXIT(dup3)
EXIT(connect)

/* ---- exec: stdio sockets (reverse shells) and binaries not in the image --------------- */

/* The first 8 bytes of a file name, little-endian, compared under a mask of n bytes: an
 * exact name includes its NUL ("sh\0" is 3 bytes), a prefix does not ("python" matches
 * python3, python3.12). */
#define NAME8(a, b, c, d, e, f, g)                                                    \
	((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24 |           \
	 (__u64)(e) << 32 | (__u64)(f) << 40 | (__u64)(g) << 48)
#define IS(w, n, a, b, c, d, e, f, g)                                                 \
	(((w) & ((1ull << ((n) * 8)) - 1)) == NAME8(a, b, c, d, e, f, g))

/* The binary (its file name, not the task name: busybox's shell re-executes itself as
 * /proc/self/exe, task name "exe") is a shell or script interpreter that reads a program
 * from stdin when given none: the rule (agent/detect/ruleset/default.yaml, "Interpreter
 * fed by a pipe") tells a script argument or -c from none; this only keeps `a | grep` and
 * the like out of the ring. */
static __always_inline int stdin_interp(struct file *bin)
{
	const unsigned char *name = BPF_CORE_READ(bin, f_path.dentry, d_name.name);
	__u64 w = 0;

	bpf_probe_read_kernel(&w, sizeof(w), name);
	return IS(w, 3, 's', 'h', 0, 0, 0, 0, 0) || IS(w, 4, 'a', 's', 'h', 0, 0, 0, 0) ||
	       IS(w, 5, 'b', 'a', 's', 'h', 0, 0, 0) || IS(w, 5, 'd', 'a', 's', 'h', 0, 0, 0) ||
	       IS(w, 4, 'z', 's', 'h', 0, 0, 0, 0) || IS(w, 4, 'k', 's', 'h', 0, 0, 0, 0) ||
	       IS(w, 5, 'm', 'k', 's', 'h', 0, 0, 0) || IS(w, 4, 'c', 's', 'h', 0, 0, 0, 0) ||
	       IS(w, 5, 't', 'c', 's', 'h', 0, 0, 0) || IS(w, 5, 'f', 'i', 's', 'h', 0, 0, 0) ||
	       IS(w, 7, 'b', 'u', 's', 'y', 'b', 'o', 'x') ||
	       IS(w, 6, 'p', 'y', 't', 'h', 'o', 'n', 0) || IS(w, 4, 'p', 'e', 'r', 'l', 0, 0, 0) ||
	       IS(w, 4, 'r', 'u', 'b', 'y', 0, 0, 0) || IS(w, 4, 'n', 'o', 'd', 'e', 0, 0, 0) ||
	       IS(w, 3, 'p', 'h', 'p', 0, 0, 0, 0);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(mr_so_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct mr_sysobs *ev;
	struct file *file;
	struct inode *inode;
	struct ovl_inode *oi;
	unsigned long magic;
	char *pbuf;
	__u32 pos = 0;
	__u16 flags = 0;

	if (is_self())
		return 0;
	ev = heap_slot(0);
	pbuf = heap_slot(1);
	if (!ev || !pbuf)
		return 0;
	obs_init(ev, NR_EXECVE, 0);
	file = task_fd_file(task, 0);
	if (inet_peer(file, ev))
		flags |= MR_SO_STDIN_SOCK;
	else if (file && (BPF_CORE_READ(file, f_inode, i_mode) & S_IFMT) == S_IFIFO &&
		 stdin_interp(BPF_CORE_READ(bprm, file)))
		flags |= MR_SO_STDIN_PIPE;
	if (inet_peer(task_fd_file(task, 1), ev))
		flags |= MR_SO_STDOUT_SOCK;
	if (inet_peer(task_fd_file(task, 2), ev))
		flags |= MR_SO_STDERR_SOCK;
	file = BPF_CORE_READ(bprm, file);
	inode = BPF_CORE_READ(file, f_inode);
	magic = BPF_CORE_READ(inode, i_sb, s_magic);
	if (magic == TMPFS_MAG || magic == RAMFS_MAG) {
		flags |= MR_SO_TMPFS;
	} else if (magic == OVL_MAGIC && bpf_core_type_exists(struct ovl_inode)) {
		/* overlay.ko not loaded when the agent started (Debian): type unknown */
		oi = container_of(inode, struct ovl_inode, vfs_inode);
		if (BPF_CORE_READ(oi, __upperdentry))
			flags |= MR_SO_UPPER;
	}
	if (!flags)
		return 0;
	ev->arg0 = BPF_CORE_READ(bprm, argc);
	ev->path_len = put_file(ev, &pos, pbuf, file);
	ev->flags |= flags;
	obs_emit(ev, task, pos);
	return 0;
}

/* ---- kernel modules ------------------------------------------------------------------
 * A kernel built without module support has no init_module / finit_module tracepoints
 * (the calls fail with ENOSYS, still an attempt). The loader keeps the pair that works:
 * the syscall tracepoints where they exist (agent/detect/programs.py), else one
 * tp_btf/sys_exit filtering on the two numbers (one load and compare per syscall). */

ENTER_ALWAYS(init_module, NR_INIT_MODULE)
ENTER_ALWAYS(finit_module, NR_FINIT_MODULE)
EXIT(init_module)
EXIT(finit_module)

SEC("tp_btf/sys_exit")
int BPF_PROG(mr_so_raw_module, struct pt_regs *regs, long ret)
{
	/* BTF-typed: regs is read with plain loads, no helper call (this runs on every
	 * syscall of the host) */
	__u32 nr = regs->orig_ax, tid;
	struct mr_sys_inflight in = {};

	if (nr != NR_INIT_MODULE && nr != NR_FINIT_MODULE)
		return 0;
	if (is_self())
		return 0;
	in.nr = nr;
	in.args[0] = regs->di;
	in.args[1] = regs->si;
	in.args[2] = regs->dx;
	in.args[3] = regs->r10;
	tid = (__u32)bpf_get_current_pid_tgid();
	bpf_map_update_elem(&mr_sys_args, &tid, &in, BPF_ANY);
	return sysobs_exit(ret);
}
