// SPDX-License-Identifier: GPL-2.0 OR Apache-2.0
/* exec: the new image is about to run (sched_process_exec fires after the old image is
 * gone and before the new one's first instruction). Reports the resolved binary, the
 * filename as passed, argv (bounded; truncation flagged) and cwd. */
#include "../lib/common.h"
#include "../maps/scratch.h"
#include "../lib/task.h"
#include "../lib/path.h"

#define MR_DATA_MAX 4096 /* each string segment is at most this long */
#define MR_DATA_MASK (MR_DATA_MAX - 1)

/* Appends the path string at pbuf[off..] to the record at *pos; returns its length. */
static __always_inline __u16 put_path(struct mr_exec *ev, __u32 *pos, char *pbuf,
				      const struct path *path, __u32 trunc_flag)
{
	__u32 trunc = 0;
	__u32 off = path_resolve(path, pbuf, &trunc);
	__u32 len;

	if (trunc) {
		ev->flags |= trunc_flag;
		stat_inc(MR_STAT_PATH_TRUNC);
	}
	len = path_copy(&ev->data[*pos & MR_DATA_MASK], pbuf, off);
	*pos += len;
	return len;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(mr_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct mr_exec *ev = heap_slot(0);
	char *pbuf = heap_slot(1);
	struct file *file;
	struct fs_struct *fs;
	const char *filename;
	__u64 arg_start, arg_end;
	__u32 pos = 0, n;
	long r;

	if (!ev || !pbuf || is_self())
		return 0;

	proc_fill(&ev->proc, task);
	ev->flags = 0;
	ev->argc = BPF_CORE_READ(bprm, argc);

	/* binary: what actually runs (symlinks resolved; the interpreter for scripts) */
	file = BPF_CORE_READ(bprm, file);
	ev->binary_len = put_path(ev, &pos, pbuf, __builtin_preserve_access_index(&file->f_path),
				  MR_F_BINARY_TRUNC);

	/* filename: as the caller passed it (e.g. /bin/sh, or a script) */
	filename = BPF_CORE_READ(bprm, filename);
	r = bpf_probe_read_kernel_str(&ev->data[pos & MR_DATA_MASK], 512, filename);
	n = r > 0 ? r - 1 : 0;
	ev->filename_len = n;
	pos += n;

	/* args: NUL-separated, bounded by cfg_args_max */
	arg_start = BPF_CORE_READ(task, mm, arg_start);
	arg_end = BPF_CORE_READ(task, mm, arg_end);
	n = arg_end > arg_start ? arg_end - arg_start : 0;
	if (n > cfg_args_max) {
		n = cfg_args_max;
		ev->flags |= MR_F_ARGS_TRUNC;
	}
	n &= MR_DATA_MASK;
	if (n && bpf_probe_read_user(&ev->data[pos & MR_DATA_MASK], n, (void *)arg_start))
		n = 0;
	ev->args_len = n;
	pos += n;

	/* cwd */
	fs = BPF_CORE_READ(task, fs);
	ev->cwd_len = put_path(ev, &pos, pbuf, __builtin_preserve_access_index(&fs->pwd),
			       MR_F_CWD_TRUNC);

	n = sizeof(*ev) + (pos & (4 * MR_DATA_MAX - 1));
	/* bound n itself, in the register passed to emit(): 6.1 and 6.12 verifiers do not
	 * carry a bound checked on (n - sizeof(*ev)) over to n (tests/kernels/run-matrix) */
	barrier_var(n);
	if (n > MR_HEAP_SIZE)
		return 0;
	hdr_init(&ev->hdr, MR_OP_EXEC, n);
	emit(ev, n);
	return 0;
}
