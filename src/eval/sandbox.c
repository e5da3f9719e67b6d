/* sandbox.c - see sandbox.h.  Linux only (namespaces, prctl). */
#define _GNU_SOURCE
#include "eval/sandbox.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SB_NOBODY 65534
/* Parallel slot k > 0 runs as this + k (no account needs to exist): each
 * slot's processes count against their own RLIMIT_NPROC, so a fork bomb
 * cannot starve the programs running beside it. */
#define SB_SLOT_UID 0x7fff0000u
#define SB_SETUP_FAIL 125 /* exit status of a child whose setup failed */
#define SB_SYS_PATH "/usr/local/bin:/usr/bin:/bin"
#define SB_INFO_FD 3

struct cm_sandbox {
    cm_sb_kind kind;
    int drop_uid;     /* root: run programs as nobody */
    unsigned uid;     /* the user they run as then: nobody, or a slot's */
    char tmp[512];    /* where scratch directories go */
    char cache[512];  /* "" or a directory programs may write */
    char bwrap[256];
    char path[4096];  /* PATH given to programs */
    char desc[400];
};

void cm_sb_default_limits(cm_sb_limits *l)
{
    *l = (cm_sb_limits){.wall_s = 15, .cpu_s = 30, .data_bytes = (uint64_t)2 << 30,
                        .as_bytes = 0, .nproc = 256, .fsize = (uint64_t)64 << 20,
                        .out_cap = 64 << 10, .out_kill = (uint64_t)16 << 20};
}

void cm_sb_result_free(cm_sb_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

const char *cm_sb_kind_name(cm_sb_kind k)
{
    static const char *const n[] = {"auto", "bwrap", "namespaces", "plain"};
    return n[k];
}

cm_sb_kind cm_sb_kind_of(const cm_sandbox *sb) { return sb->kind; }
const char *cm_sb_describe(const cm_sandbox *sb) { return sb->desc; }
const char *cm_sb_path(const cm_sandbox *sb) { return sb->path; }
const char *cm_sb_cache(const cm_sandbox *sb) { return sb->cache; }

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- scratch directories ---- */

cm_status cm_sb_scratch_new(const cm_sandbox *sb, char *path, size_t cap, cm_err *err)
{
    int n = snprintf(path, cap, "%s/codemoe-sb-XXXXXX", sb->tmp);
    if (n < 0 || (size_t)n >= cap)
        return cm_fail(err, CM_E_RANGE, "scratch path too long under %s", sb->tmp);
    if (!mkdtemp(path))
        return cm_fail(err, CM_E_IO, "cannot create a scratch directory in %s: %s", sb->tmp,
                       strerror(errno));
    if (sb->drop_uid && chown(path, sb->uid, sb->uid) != 0) {
        int e = errno;
        rmdir(path);
        return cm_fail(err, CM_E_IO, "chown %s: %s", path, strerror(e));
    }
    return CM_OK;
}

cm_status cm_sb_write(const char *scratch, const char *name, const char *data, size_t len,
                      cm_err *err)
{
    char p[1024];
    if (strchr(name, '/') || snprintf(p, sizeof p, "%s/%s", scratch, name) >= (int)sizeof p)
        return cm_fail(err, CM_E_RANGE, "bad scratch file name '%s'", name);
    FILE *f = fopen(p, "wb");
    if (!f)
        return cm_fail(err, CM_E_IO, "cannot write %s: %s", p, strerror(errno));
    size_t w = fwrite(data, 1, len, f);
    if (fclose(f) != 0 || w != len)
        return cm_fail(err, CM_E_IO, "cannot write %s", p);
    return CM_OK;
}

/* Removes what dirfd holds; directories are made accessible first, since
 * a program may have chmod-ed them to 000. */
static int remove_in(int dirfd)
{
    DIR *d = fdopendir(dirfd);
    if (!d) {
        close(dirfd);
        return -1;
    }
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        struct stat st;
        if (fstatat(dirfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            continue;
        if (S_ISDIR(st.st_mode)) {
            int fd = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
            if (fd < 0 && fchmodat(dirfd, e->d_name, 0700, 0) == 0)
                fd = openat(dirfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
            if (fd >= 0) {
                fchmod(fd, 0700);
                rc |= remove_in(fd);
            }
            rc |= unlinkat(dirfd, e->d_name, AT_REMOVEDIR);
        } else {
            rc |= unlinkat(dirfd, e->d_name, 0);
        }
    }
    closedir(d);
    return rc ? -1 : 0;
}

int cm_sb_scratch_remove(const char *scratch)
{
    chmod(scratch, 0700);
    int fd = open(scratch, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    int rc = remove_in(fd);
    return rmdir(scratch) != 0 ? -1 : rc;
}

/* ---- the child side (between fork and exec: no allocation, no stdio) ---- */

typedef struct {
    const cm_sandbox *sb;
    const char *scratch;
    const cm_sb_limits *lim;
    const char *cmd;
    char *const *envp;
    rlim_t nproc;
} child_args;

static void set_limit(int res, rlim_t v)
{
    struct rlimit rl = {v, v};
    setrlimit(res, &rl);
}

static void apply_limits(const child_args *a)
{
    const cm_sb_limits *l = a->lim;
    set_limit(RLIMIT_CPU, (rlim_t)l->cpu_s);
    set_limit(RLIMIT_DATA, (rlim_t)l->data_bytes);
    if (l->as_bytes)
        set_limit(RLIMIT_AS, (rlim_t)l->as_bytes);
    set_limit(RLIMIT_FSIZE, (rlim_t)l->fsize);
    set_limit(RLIMIT_NPROC, a->nproc);
    set_limit(RLIMIT_CORE, 0);
    set_limit(RLIMIT_NOFILE, 256);
}

static void die_setup(const char *what)
{
    char msg[160];
    int n = snprintf(msg, sizeof msg, "codemoe sandbox: %s: %s\n", what, strerror(errno));
    if (n > 0 && write(2, msg, (size_t)n) < 0)
        _exit(SB_SETUP_FAIL);
    _exit(SB_SETUP_FAIL);
}

static void drop_to_user(unsigned uid)
{
    if (setgroups(0, NULL) != 0 || setgid(uid) != 0 || setuid(uid) != 0)
        die_setup("cannot switch to the sandbox user");
}

static void exec_shell(const child_args *a)
{
    char *argv[] = {"sh", "-c", (char *)a->cmd, NULL};
    if (chdir(a->scratch) != 0)
        die_setup("cannot enter the scratch directory (must be searchable by the sandbox user)");
    execve("/bin/sh", argv, a->envp);
    die_setup("exec /bin/sh");
}

/* Fresh /tmp, /var/tmp and /dev/shm; the rest read-only; the scratch and
 * cache directories bound back where they were (they may be under /tmp). */
static void setup_mounts(const child_args *a)
{
    const char *keep[2] = {a->scratch, a->sb->cache[0] ? a->sb->cache : NULL};
    int fds[2] = {-1, -1};
    for (int i = 0; i < 2; i++)
        if (keep[i] && (fds[i] = open(keep[i], O_PATH | O_DIRECTORY)) < 0)
            die_setup("open scratch");
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
        die_setup("make mounts private");
    struct { unsigned long long set, clr, prop, userns; } attr = {0x1 /* RDONLY */, 0, 0, 0};
    syscall(SYS_mount_setattr, -1, "/", 0x8000 /* AT_RECURSIVE */, &attr, sizeof attr);
    const char *tmps[] = {"/tmp", "/var/tmp", "/dev/shm"};
    for (int i = 0; i < 3; i++)
        mount("tmpfs", tmps[i], "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777");
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL); /* this PID ns */
    for (int i = 0; i < 2; i++) {
        char src[64], p[512];
        if (!keep[i])
            continue;
        snprintf(src, sizeof src, "/proc/self/fd/%d", fds[i]);
        snprintf(p, sizeof p, "%s", keep[i]);
        for (char *s = p + 1; *s; s++) /* mkdir -p: it may now be on a tmpfs */
            if (*s == '/') {
                *s = 0;
                mkdir(p, 0755);
                *s = '/';
            }
        mkdir(p, 0755);
        if (mount(src, keep[i], NULL, MS_BIND | MS_REC, NULL) != 0)
            die_setup("bind the scratch directory");
        close(fds[i]);
    }
}

/* PID 1 of the new namespace: starts the shell, reaps every orphan, and
 * exits with the shell's status; its exit ends the namespace. */
static void ns_init(const child_args *a)
{
    setup_mounts(a);
    if (a->sb->drop_uid)
        drop_to_user(a->sb->uid);
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* after setuid, which clears it */
    pid_t c = fork();
    if (c < 0)
        die_setup("fork");
    if (c == 0) {
        apply_limits(a);
        exec_shell(a);
    }
    int st = 0;
    for (;;) {
        int s;
        pid_t p = wait(&s);
        if (p == c)
            st = s;
        if (p < 0 && errno == ECHILD)
            break;
        if (p == c)
            break;
    }
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
}

static void write_id_map(const char *file, unsigned id)
{
    char buf[64];
    int n = snprintf(buf, sizeof buf, "%u %u 1\n", id, id), fd = open(file, O_WRONLY);
    if (fd < 0 || write(fd, buf, (size_t)n) != n)
        die_setup(file);
    close(fd);
}

static void child_namespaces(const child_args *a)
{
    if (!a->sb->drop_uid && getuid() != 0) { /* an unprivileged user namespace */
        unsigned uid = getuid(), gid = getgid();
        if (unshare(CLONE_NEWUSER) != 0)
            die_setup("unshare(CLONE_NEWUSER)");
        int fd = open("/proc/self/setgroups", O_WRONLY);
        if (fd >= 0 && write(fd, "deny", 4) < 0)
            die_setup("setgroups");
        if (fd >= 0)
            close(fd);
        write_id_map("/proc/self/uid_map", uid);
        write_id_map("/proc/self/gid_map", gid);
    }
    if (unshare(CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS) != 0)
        die_setup("unshare(network, PID, mount namespaces)");
    pid_t b = fork();
    if (b < 0)
        die_setup("fork");
    if (b == 0) {
        close(SB_INFO_FD);
        ns_init(a);
    }
    char msg[32];
    int n = snprintf(msg, sizeof msg, "\"child-pid\": %d\n", (int)b);
    if (write(SB_INFO_FD, msg, (size_t)n) < 0)
        kill(b, SIGKILL);
    close(SB_INFO_FD);
    int st = 0;
    while (waitpid(b, &st, 0) < 0 && errno == EINTR)
        ;
    _exit(WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
}

static void child_bwrap(const child_args *a)
{
    const cm_sandbox *sb = a->sb;
    char *argv[48];
    int n = 0;
    const char *fixed[] = {"bwrap", "--unshare-all", "--die-with-parent", "--new-session",
                           "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                           "--tmpfs", "/tmp", "--tmpfs", "/var/tmp", "--tmpfs", "/dev/shm"};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        argv[n++] = (char *)fixed[i];
    argv[n++] = "--bind", argv[n++] = (char *)a->scratch, argv[n++] = (char *)a->scratch;
    if (sb->cache[0])
        argv[n++] = "--bind", argv[n++] = (char *)sb->cache, argv[n++] = (char *)sb->cache;
    argv[n++] = "--chdir", argv[n++] = (char *)a->scratch;
    argv[n++] = "--info-fd", argv[n++] = "3";
    argv[n++] = "--", argv[n++] = "/bin/sh", argv[n++] = "-c", argv[n++] = (char *)a->cmd;
    argv[n] = NULL;
    if (sb->drop_uid)
        drop_to_user(a->sb->uid);
    apply_limits(a);
    execve(sb->bwrap, argv, a->envp);
    die_setup("exec bwrap");
}

/* fd 3 (SB_INFO_FD) tells the parent the PID of the namespace's init, so
 * that it can kill it and wait for the whole namespace to be gone. */
static void child_main(const child_args *a, int out_fd, int err_fd, int info_fd)
{
    setpgid(0, 0);
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0 ||
        dup2(info_fd, SB_INFO_FD) < 0)
        _exit(SB_SETUP_FAIL);
    for (int fd = SB_INFO_FD + 1; fd < 1024; fd++)
        close(fd);
    signal(SIGPIPE, SIG_DFL);
    switch (a->sb->kind) {
    case CM_SB_BWRAP: child_bwrap(a); break;
    case CM_SB_NAMESPACES: child_namespaces(a); break;
    default:
        close(SB_INFO_FD);
        if (a->sb->drop_uid)
            drop_to_user(a->sb->uid);
        apply_limits(a);
        exec_shell(a);
    }
    _exit(SB_SETUP_FAIL);
}

/* ---- the parent side ---- */

typedef struct {
    char *buf;
    size_t len, cap;
} cap_buf;

static void keep_bytes(cap_buf *b, const char *p, size_t n)
{
    size_t room = b->cap - b->len;
    memcpy(b->buf + b->len, p, n < room ? n : room);
    b->len += n < room ? n : room;
}

/* Tasks (threads count for RLIMIT_NPROC) the user runs now. */
static rlim_t user_tasks(uid_t uid)
{
    DIR *d = opendir("/proc");
    rlim_t n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char p[300];
        struct stat st;
        snprintf(p, sizeof p, "/proc/%s/task", e->d_name);
        if (e->d_name[0] < '0' || e->d_name[0] > '9' || stat(p, &st) != 0 || st.st_uid != uid)
            continue;
        n += st.st_nlink > 2 ? (rlim_t)st.st_nlink - 2 : 1;
    }
    if (d)
        closedir(d);
    return n;
}

static char **make_env(const cm_sandbox *sb, const char *scratch, const char *const *extra)
{
    size_t n = 0;
    while (extra && extra[n])
        n++;
    char **env = calloc(n + 6, sizeof *env);
    if (!env)
        return NULL;
    size_t k = 0, len = strlen(scratch) + strlen(sb->path) + 16;
    const char *fmt[] = {"PATH=%s", "HOME=%s", "TMPDIR=%s", "LANG=C.UTF-8"};
    const char *val[] = {sb->path, scratch, scratch, ""};
    for (int i = 0; i < 4; i++) {
        if (!(env[k] = malloc(len)))
            break;
        snprintf(env[k++], len, fmt[i], val[i]);
    }
    for (size_t i = 0; i < n && k == 4 + i; i++)
        env[k++] = strdup(extra[i]);
    return env;
}

static void free_env(char **env)
{
    for (size_t i = 0; env && env[i]; i++)
        free(env[i]);
    free(env);
}

/* Reads both pipes until they close, the time is up or there is too much
 * output; reaps the child (*st) when it exits. */
static void collect(pid_t pid, int fds[2], const cm_sb_limits *lim, cap_buf bufs[2],
                    cm_sb_result *r, int *st, int *reaped)
{
    double t0 = mono_now(), end_grace = 0;
    struct pollfd pf[2] = {{fds[0], POLLIN, 0}, {fds[1], POLLIN, 0}};
    int open_n = 2;
    while (open_n > 0) {
        double now = mono_now();
        if (now - t0 >= lim->wall_s) {
            r->timed_out = !*reaped;
            break;
        }
        if (end_grace && now > end_grace)
            break;
        int ms = (int)((lim->wall_s - (now - t0)) * 1000) + 1;
        poll(pf, 2, ms < 100 ? ms : 100);
        for (int i = 0; i < 2; i++) {
            if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[65536];
            ssize_t n = read(pf[i].fd, chunk, sizeof chunk);
            if (n <= 0 && !(n < 0 && errno == EINTR)) {
                pf[i].fd = -1, open_n--;
                continue;
            }
            if (n > 0)
                keep_bytes(&bufs[i], chunk, (size_t)n), r->out_total += (uint64_t)n;
        }
        if (r->out_total > lim->out_kill) {
            r->out_limit = 1;
            break;
        }
        if (!*reaped && waitpid(pid, st, WNOHANG) == pid) {
            *reaped = 1; /* what it left behind may hold the pipes: a short grace */
            kill(-pid, SIGKILL);
            end_grace = mono_now() + 0.5;
        }
    }
}

static void fill_status(cm_sb_result *r, int st, int reaped)
{
    r->exit_code = -1;
    if (!reaped || r->timed_out || r->out_limit)
        r->signal = SIGKILL;
    else if (WIFSIGNALED(st))
        r->signal = WTERMSIG(st);
    else if (WEXITSTATUS(st) > 128 && WEXITSTATUS(st) < 128 + 65) /* the shell's convention */
        r->signal = WEXITSTATUS(st) - 128;
    else
        r->exit_code = WEXITSTATUS(st);
}

/* The namespace's init, as A (pid) reported it, if A is still its parent. */
static pid_t ns_init_pid(int info_fd, pid_t pid)
{
    char buf[256], path[64], stat[512];
    ssize_t n = read(info_fd, buf, sizeof buf - 1);
    const char *p = n > 0 ? (buf[n] = 0, strstr(buf, "\"child-pid\":")) : NULL;
    long c = p ? strtol(p + 12, NULL, 10) : 0;
    if (c <= 1)
        return 0;
    snprintf(path, sizeof path, "/proc/%ld/stat", c);
    FILE *f = fopen(path, "r");
    size_t got = f ? fread(stat, 1, sizeof stat - 1, f) : 0;
    if (f)
        fclose(f);
    stat[got] = 0;
    const char *rp = strrchr(stat, ')'); /* then: state, ppid */
    long ppid = 0;
    if (!rp || sscanf(rp + 1, " %*c %ld", &ppid) != 1 || ppid != pid)
        return 0;
    return (pid_t)c;
}

/* Kills everything: the namespace's init first, so that A's exit (which
 * waits for it) means the whole namespace is gone; then the group. */
static void kill_all(pid_t pid, int info_fd, int *st, int *reaped)
{
    pid_t init = *reaped ? 0 : ns_init_pid(info_fd, pid);
    if (init > 0)
        kill(init, SIGKILL);
    if (!*reaped && init > 0)
        *reaped = waitpid(pid, st, 0) == pid;
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    if (!*reaped)
        *reaped = waitpid(pid, st, 0) == pid;
}

cm_status cm_sb_run(const cm_sandbox *sb, const char *scratch, const cm_sb_limits *lim,
                    const char *cmd, const char *const *env, cm_sb_result *res, cm_err *err)
{
    memset(res, 0, sizeof *res);
    int po[2], pe[2], pi[2];
    char **envp = make_env(sb, scratch, env);
    cap_buf bufs[2] = {{malloc(lim->out_cap + 1), 0, lim->out_cap},
                       {malloc(lim->out_cap + 1), 0, lim->out_cap}};
    if (!envp || !bufs[0].buf || !bufs[1].buf) {
        free_env(envp), free(bufs[0].buf), free(bufs[1].buf);
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    }
    if (pipe2(po, O_CLOEXEC) != 0 || pipe2(pe, O_CLOEXEC) != 0 ||
        pipe2(pi, O_CLOEXEC | O_NONBLOCK) != 0) {
        free_env(envp), free(bufs[0].buf), free(bufs[1].buf);
        return cm_fail(err, CM_E_IO, "pipe: %s", strerror(errno));
    }
    child_args a = {sb, scratch, lim, cmd, envp,
                    (rlim_t)lim->nproc + (sb->drop_uid ? 0 : user_tasks(getuid()))};
    double t0 = mono_now();
    pid_t pid = fork();
    if (pid == 0)
        child_main(&a, po[1], pe[1], pi[1]);
    close(po[1]), close(pe[1]), close(pi[1]);
    int st = 0, reaped = 0;
    if (pid > 0) {
        setpgid(pid, pid); /* also here: no race with the kill below */
        collect(pid, (int[2]){po[0], pe[0]}, lim, bufs, res, &st, &reaped);
        kill_all(pid, pi[0], &st, &reaped);
    }
    close(po[0]), close(pe[0]), close(pi[0]);
    free_env(envp);
    res->seconds = mono_now() - t0;
    bufs[0].buf[bufs[0].len] = 0, bufs[1].buf[bufs[1].len] = 0;
    res->out = bufs[0].buf, res->out_len = bufs[0].len;
    res->err = bufs[1].buf, res->err_len = bufs[1].len;
    if (pid < 0)
        return cm_sb_result_free(res), cm_fail(err, CM_E_IO, "fork: %s", strerror(errno));
    fill_status(res, st, reaped);
    return CM_OK;
}

/* ---- choosing the mechanism ---- */

static int find_bwrap(char *out, size_t cap)
{
    const char *dirs[] = {"/usr/bin", "/bin", "/usr/local/bin"};
    for (int i = 0; i < 3; i++) {
        snprintf(out, cap, "%s/bwrap", dirs[i]);
        if (access(out, X_OK) == 0)
            return 1;
    }
    return 0;
}

/* Runs `exit 0` the chosen way: 1 when that works here. */
static int probe(cm_sandbox *sb, char *why, size_t cap)
{
    char dir[600];
    cm_sb_limits l;
    cm_sb_result r;
    cm_err e;
    cm_sb_default_limits(&l);
    l.wall_s = 10;
    if (cm_sb_scratch_new(sb, dir, sizeof dir, &e))
        return snprintf(why, cap, "%s", e.msg), 0;
    int ok = !cm_sb_run(sb, dir, &l, "exit 0", NULL, &r, &e) && r.exit_code == 0;
    if (!ok)
        snprintf(why, cap, "%.*s", (int)strcspn(r.err ? r.err : "", "\n"), r.err ? r.err : "");
    cm_sb_result_free(&r);
    cm_sb_scratch_remove(dir);
    return ok;
}

static void describe(cm_sandbox *sb)
{
    const char *who = sb->drop_uid ? ", as user nobody" : "";
    if (sb->kind == CM_SB_BWRAP)
        snprintf(sb->desc, sizeof sb->desc, "bubblewrap (%s): no network, own PID/IPC/UTS "
                 "namespaces, read-only /, rlimits%s", sb->bwrap, who);
    else if (sb->kind == CM_SB_NAMESPACES)
        snprintf(sb->desc, sizeof sb->desc, "namespaces (unshare): no network, own PID/mount/"
                 "IPC/UTS namespaces, read-only /, rlimits%s", who);
    else
        snprintf(sb->desc, sizeof sb->desc, "plain: rlimits and a process group only, NO "
                 "network isolation%s", who);
}

static cm_status sb_paths(cm_sandbox *sb, const char *tmp_base, const char *cache_dir,
                          cm_err *err)
{
    const char *t = tmp_base ? tmp_base : getenv("TMPDIR");
    char real[PATH_MAX];
    if (!t || !*t)
        t = "/tmp";
    if (!realpath(t, real) || strlen(real) >= sizeof sb->tmp)
        return cm_fail(err, CM_E_IO, "scratch base %s: %s", t, strerror(errno));
    strcpy(sb->tmp, real);
    if (cache_dir) {
        if (mkdir(cache_dir, 0755) != 0 && errno != EEXIST)
            return cm_fail(err, CM_E_IO, "cannot create %s: %s", cache_dir, strerror(errno));
        if (!realpath(cache_dir, real) || strlen(real) >= sizeof sb->cache)
            return cm_fail(err, CM_E_IO, "cache directory %s: %s", cache_dir, strerror(errno));
        strcpy(sb->cache, real);
        if (sb->drop_uid && chown(sb->cache, sb->uid, sb->uid) != 0)
            return cm_fail(err, CM_E_IO, "chown %s: %s", sb->cache, strerror(errno));
    }
    const char *p = getenv("PATH");
    snprintf(sb->path, sizeof sb->path, "%s", sb->drop_uid || !p ? SB_SYS_PATH : p);
    return CM_OK;
}

cm_status cm_sb_new(cm_sb_kind want, const char *tmp_base, const char *cache_dir,
                    cm_sandbox **out, cm_err *err)
{
    cm_sandbox *sb = calloc(1, sizeof *sb);
    if (!sb)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    sb->drop_uid = geteuid() == 0;
    sb->uid = SB_NOBODY;
    cm_status s = sb_paths(sb, tmp_base, cache_dir, err);
    char why[3][600] = {"not installed", "", ""};
    int ok = 0;
    for (int k = CM_SB_BWRAP; !s && !ok && k <= CM_SB_PLAIN; k++) {
        if (want != CM_SB_AUTO && (cm_sb_kind)k != want)
            continue;
        sb->kind = (cm_sb_kind)k;
        if (k == CM_SB_BWRAP && !find_bwrap(sb->bwrap, sizeof sb->bwrap))
            continue;
        ok = probe(sb, why[k - 1], sizeof why[k - 1]);
    }
    if (!s && !ok)
        s = cm_fail(err, CM_E_UNSUPPORTED, "the %s sandbox does not work here: %s",
                    cm_sb_kind_name(want == CM_SB_AUTO ? CM_SB_PLAIN : want),
                    why[(want == CM_SB_AUTO ? CM_SB_PLAIN : want) - 1]);
    if (s) {
        free(sb);
        return s;
    }
    describe(sb);
    *out = sb;
    return CM_OK;
}

cm_status cm_sb_slot(const cm_sandbox *sb, int slot, cm_sandbox **out, cm_err *err)
{
    *out = NULL;
    if (slot < 0 || slot > 65535)
        return cm_fail(err, CM_E_RANGE, "sandbox slot %d is out of range", slot);
    cm_sandbox *c = malloc(sizeof *c);
    if (!c)
        return cm_fail(err, CM_E_NOMEM, "out of memory");
    *c = *sb;
    c->uid = slot ? SB_SLOT_UID + (unsigned)slot : SB_NOBODY;
    if (slot && sb->cache[0] &&
        snprintf(c->cache, sizeof c->cache, "%s/slot-%d", sb->cache, slot) >= (int)sizeof c->cache) {
        free(c);
        return cm_fail(err, CM_E_RANGE, "cache path too long: %s", sb->cache);
    }
    /* the other slots' users go through sb's cache to their own */
    if (slot && sb->cache[0] && (chmod(sb->cache, 0711) != 0 ||
                                 (mkdir(c->cache, 0755) != 0 && errno != EEXIST))) {
        int e = errno;
        free(c);
        return cm_fail(err, CM_E_IO, "cannot create %s: %s", sb->cache, strerror(e));
    }
    if (slot && sb->cache[0] && c->drop_uid && chown(c->cache, c->uid, c->uid) != 0) {
        int e = errno;
        free(c);
        return cm_fail(err, CM_E_IO, "chown %s: %s", sb->cache, strerror(e));
    }
    *out = c;
    return CM_OK;
}

void cm_sb_free(cm_sandbox *sb) { free(sb); }
