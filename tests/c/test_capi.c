/* C API test for autolr: include/autolr.h against the cdylib.
 *
 * Build (from the repository root, after `cargo build --release`):
 *   gcc -std=c11 -Wall -Wextra -Werror -Iinclude tests/c/test_capi.c \
 *       -Ltarget/release -lautolr -lm -Wl,-rpath,$PWD/target/release
 * or run tests/c/run.sh (builds it and runs it under valgrind).
 *
 * What it covers:
 *   - create / options by name, per group, get_option / step / lr / momentum / telemetry /
 *     save_size / save / load / destroy on 'adam' and 'momentum', 3 tensors in 2 groups;
 *   - a few steps of each against a tiny float64 re-implementation written here
 *     (docs/algorithms.md §0, PyTorch conventions);
 *   - save at step k, load into a fresh optimizer, continue: bit-identical to an
 *     uninterrupted run, options restored;
 *   - every status code a CPU build can produce, each at least once, with its message printed
 *     and checked non-empty; after every failed call on a live optimizer the parameters and the
 *     saved state bytes are bit-identical to before (memcmp);
 *   - issue 17: sizes no buffer can have (per-sample N·len·4 > isize::MAX, DLPack shapes whose
 *     element product overflows or wraps around 2^64), alr_save_size / alr_save / alr_create
 *     under a limited address space (child processes), a caught panic printing nothing, and
 *     alr_load's header comment listing what it returns.
 *
 * ALR_CUDA_ERROR cannot be produced here: it is reserved for the CUDA backend, which this
 * version does not have yet (a CUDA device is refused with ALR_UNSUPPORTED before any driver
 * call, and a CPU optimizer never talks to the driver).
 *
 * ALR_CALLBACK_FAILED needs an algorithm that calls back into the caller ('gi' calls the loss
 * callback, 'vsgd-l' the gradient callback). The code path below tries to create each; when
 * neither exists yet (ALR_INVALID_ARGUMENT, unknown algorithm) it prints a note and skips.
 *
 * Output ends with "N passed, M failed"; the exit status is non-zero when M > 0.
 * Everything created is destroyed and everything allocated is freed (valgrind-clean).
 */
#define _POSIX_C_SOURCE 200809L /* fork, waitpid: a call that may abort the process runs in a child */
#include "autolr.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------- */
/* checks                                                                                    */

static int n_pass = 0, n_fail = 0;
static char last_msg[4096]; /* copy of alr_last_error() after the last expect() */

static void checkf(int ok, int line, const char *fmt, ...) {
    if (ok) {
        n_pass++;
        return;
    }
    n_fail++;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL (line %d): ", line);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}
#define CHECK(cond, ...) checkf((cond) != 0, __LINE__, __VA_ARGS__)

/* Checks a status; on an expected failure prints the message and checks it is non-empty. The
 * message is read first thing, before any other alr_* call can replace it. */
static int expect_at(AlrStatus rc, AlrStatus want, const char *what, int line) {
    const char *msg = alr_last_error();
    snprintf(last_msg, sizeof last_msg, "%s", msg ? msg : "(null)");
    int ok = rc == want;
    checkf(ok, line, "%s: got %s, want %s (message: '%s')", what, alr_status_name(rc), alr_status_name(want), last_msg);
    if (want == ALR_OK) {
        checkf(msg != NULL && msg[0] == '\0', line, "%s: last error should be empty after success, is '%s'", what, last_msg);
    } else {
        checkf(msg != NULL && strlen(msg) > 0, line, "%s: %s with an empty message", what, alr_status_name(rc));
        printf("  [%-20s] %-58s -> %s\n", alr_status_name(rc), what, last_msg);
    }
    return ok;
}
#define EXPECT(rc, want, what) expect_at((rc), (want), (what), __LINE__)
#define MSG_HAS(needle) CHECK(strstr(last_msg, (needle)) != NULL, "message '%s' should mention '%s'", last_msg, (needle))

/* ---------------------------------------------------------------------------------------- */
/* the fixture: 3 tensors (lengths not multiples of 8, to exercise tails) in 2 groups        */

#define NT 3
#define NG 2
#define MAXLEN 13
static const size_t LENS[NT] = {13, 4, 9};
static const uint32_t GROUPS[NT] = {0, 1, 0}; /* tensors 0 and 2 share group 0 */

typedef struct {
    AlrOptimizer *opt;
    float p[NT][MAXLEN];
    float g[NT][MAXLEN];
    float *pp[NT];
    const float *gp[NT];
    AlrStepArgs args;
} Fix;

/* A communicator of one process: the sums over every process are this process's own. */
static int identity_reduce(void *user_data, double *values, size_t n, int32_t op, void *stream) {
    (void)user_data, (void)values, (void)n, (void)op, (void)stream;
    return 0;
}

static AlrCreateArgs create_args(const char *algorithm, const size_t *lens, const uint32_t *groups, size_t n) {
    AlrCreateArgs a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.algorithm = algorithm;
    a.n_tensors = n;
    a.lens = lens;
    a.groups = groups;
    a.device = ALR_DEVICE_CPU;
    return a;
}

static AlrStatus create(const char *algorithm, const size_t *lens, const uint32_t *groups, size_t n, AlrOptimizer **out) {
    AlrCreateArgs a = create_args(algorithm, lens, groups, n);
    return alr_create(&a, out);
}

static void init_params(Fix *fx) {
    for (size_t t = 0; t < NT; t++)
        for (size_t i = 0; i < MAXLEN; i++) fx->p[t][i] = (i < LENS[t]) ? (float)sin(0.37 * (double)i + 1.1 * (double)t + 0.2) : 0.0f;
}

/* A gradient that depends on the parameters (so errors would compound) plus a deterministic wiggle. */
static void make_grads(Fix *fx, int step) {
    for (size_t t = 0; t < NT; t++)
        for (size_t i = 0; i < LENS[t]; i++)
            fx->g[t][i] = (float)(0.5 * (double)fx->p[t][i] + 0.3 * cos(1.3 * (double)i + 0.7 * step + (double)t));
}

static void fix_args(Fix *fx) {
    for (size_t t = 0; t < NT; t++) {
        fx->pp[t] = fx->p[t];
        fx->gp[t] = fx->g[t];
    }
    memset(&fx->args, 0, sizeof fx->args);
    fx->args.struct_size = sizeof fx->args;
    fx->args.n_tensors = NT;
    fx->args.params = fx->pp;
    fx->args.grads = fx->gp;
}

static int fix_open(Fix *fx, const char *algorithm) {
    memset(fx, 0, sizeof *fx);
    init_params(fx);
    fix_args(fx);
    return EXPECT(create(algorithm, LENS, GROUPS, NT, &fx->opt), ALR_OK, "alr_create fixture");
}

static void fix_close(Fix *fx) {
    EXPECT(alr_destroy(fx->opt), ALR_OK, "alr_destroy fixture");
    fx->opt = NULL;
}

static AlrStatus fix_step(Fix *fx, int step) {
    make_grads(fx, step);
    fix_args(fx);
    return alr_step(fx->opt, &fx->args);
}

/* alr_set_mode's arguments over the fixture's parameters. */
static AlrModeArgs fix_mode_args(Fix *fx, AlrMode mode) {
    AlrModeArgs m;
    memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    m.n_tensors = NT;
    m.params = fx->pp;
    m.mode = mode;
    return m;
}

/* ---------------------------------------------------------------------------------------- */
/* snapshots: parameters + saved state bytes                                                */

typedef struct {
    float p[NT][MAXLEN];
    uint8_t *state;
    size_t len;
} Snap;

static uint8_t *save_state(AlrOptimizer *opt, size_t *len) {
    size_t size = 0, written = 0;
    if (alr_save_size(opt, &size) != ALR_OK) return NULL;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return NULL;
    if (alr_save(opt, buf, size, &written) != ALR_OK || written != size) {
        free(buf);
        return NULL;
    }
    *len = size;
    return buf;
}

static void snap_take(const Fix *fx, Snap *s) {
    memcpy(s->p, fx->p, sizeof s->p);
    s->len = 0;
    s->state = save_state(fx->opt, &s->len);
    CHECK(s->state != NULL, "snapshot: alr_save failed: %s", alr_last_error());
}

static void snap_free(Snap *s) {
    free(s->state);
    s->state = NULL;
}

/* Parameters and state bytes bit-identical to the snapshot. */
static void unchanged_at(const Fix *fx, const Snap *s, const char *what, int line) {
    checkf(memcmp(fx->p, s->p, sizeof s->p) == 0, line, "%s: parameters changed by a failed call", what);
    size_t len = 0;
    uint8_t *now = save_state(fx->opt, &len);
    checkf(now != NULL && len == s->len && memcmp(now, s->state, len) == 0, line, "%s: saved state changed by a failed call", what);
    free(now);
}
#define UNCHANGED(fx, s, what) unchanged_at((fx), (s), (what), __LINE__)

/* A failed call on the fixture: right status, message, nothing changed. */
#define FAILS(fx, s, call, want, what)         \
    do {                                       \
        EXPECT((call), (want), (what));        \
        UNCHANGED((fx), (s), (what));          \
    } while (0)

/* ---------------------------------------------------------------------------------------- */
/* float64 reference of docs/algorithms.md §0 (momentum: PyTorch convention, first step m = g)     */

typedef struct {
    double p[NT][MAXLEN], m[NT][MAXLEN], v[NT][MAXLEN];
    long t[NG];
} Ref;

static void ref_init(Ref *r, const Fix *fx) {
    memset(r, 0, sizeof *r);
    for (size_t t = 0; t < NT; t++)
        for (size_t i = 0; i < LENS[t]; i++) r->p[t][i] = (double)fx->p[t][i];
}

static void ref_momentum(Ref *r, const Fix *fx, const double lr[NG], const double mu[NG], const double wd[NG]) {
    for (size_t k = 0; k < NG; k++) r->t[k]++;
    for (size_t t = 0; t < NT; t++) {
        size_t k = GROUPS[t];
        for (size_t i = 0; i < LENS[t]; i++) {
            double g = (double)fx->g[t][i] + wd[k] * r->p[t][i];
            r->m[t][i] = (r->t[k] == 1) ? g : mu[k] * r->m[t][i] + g;
            r->p[t][i] -= lr[k] * r->m[t][i];
        }
    }
}

static void ref_adam(Ref *r, const Fix *fx, const double lr[NG], const double b1[NG], const double b2[NG], double eps) {
    for (size_t k = 0; k < NG; k++) r->t[k]++;
    for (size_t t = 0; t < NT; t++) {
        size_t k = GROUPS[t];
        double c1 = 1.0 - pow(b1[k], (double)r->t[k]), c2 = 1.0 - pow(b2[k], (double)r->t[k]);
        for (size_t i = 0; i < LENS[t]; i++) {
            double g = (double)fx->g[t][i];
            r->m[t][i] = b1[k] * r->m[t][i] + (1.0 - b1[k]) * g;
            r->v[t][i] = b2[k] * r->v[t][i] + (1.0 - b2[k]) * g * g;
            r->p[t][i] -= lr[k] * (r->m[t][i] / c1) / (sqrt(r->v[t][i] / c2) + eps);
        }
    }
}

static double ref_max_err(const Ref *r, const Fix *fx) {
    double worst = 0.0;
    for (size_t t = 0; t < NT; t++)
        for (size_t i = 0; i < LENS[t]; i++) {
            double scale = fabs(r->p[t][i]) > 1.0 ? fabs(r->p[t][i]) : 1.0;
            double e = fabs((double)fx->p[t][i] - r->p[t][i]) / scale;
            if (e > worst) worst = e;
        }
    return worst;
}

/* ---------------------------------------------------------------------------------------- */
/* option / read-back helpers                                                                */

static double get_opt(AlrOptimizer *opt, size_t group, const char *name) {
    double v = NAN;
    AlrStatus rc = alr_get_option(opt, group, name, &v);
    CHECK(rc == ALR_OK, "alr_get_option(%zu, %s): %s %s", group, name, alr_status_name(rc), alr_last_error());
    return v;
}

static void check_readback(AlrOptimizer *opt, const char *alg, const double lr[NG], const double mom[NG], int steps) {
    size_t ng = 0;
    EXPECT(alr_n_groups(opt, &ng), ALR_OK, "alr_n_groups");
    CHECK(ng == NG, "%s: alr_n_groups = %zu, want %d", alg, ng, NG);
    for (size_t k = 0; k < NG; k++) {
        double v = NAN;
        EXPECT(alr_get_lr(opt, k, &v), ALR_OK, "alr_get_lr");
        CHECK(v == lr[k], "%s group %zu: lr %.17g, want %.17g", alg, k, v, lr[k]);
        EXPECT(alr_get_momentum(opt, k, &v), ALR_OK, "alr_get_momentum");
        CHECK(v == mom[k], "%s group %zu: momentum %.17g, want %.17g", alg, k, v, mom[k]);
        size_t count = 0;
        EXPECT(alr_telemetry_count(opt, k, &count), ALR_OK, "alr_telemetry_count");
        CHECK(count >= 1, "%s group %zu: no telemetry", alg, k);
        int saw_steps = 0;
        for (size_t e = 0; e < count; e++) {
            const char *name = NULL;
            double value = NAN;
            EXPECT(alr_telemetry_entry(opt, k, e, &name, &value), ALR_OK, "alr_telemetry_entry");
            CHECK(name != NULL && name[0] != '\0', "%s group %zu entry %zu: empty name", alg, k, e);
            if (!name) continue;
            CHECK(isfinite(value), "%s telemetry %s = %g is not finite", alg, name, value);
            if (strcmp(name, "steps") == 0) {
                saw_steps = 1;
                CHECK(value == (double)steps, "%s telemetry steps %g, want %d", alg, value, steps);
            }
        }
        CHECK(saw_steps, "%s group %zu: telemetry has no 'steps' entry", alg, k);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* 1. momentum and adam: options, steps against the reference, read-back                    */

static const double MOM_LR[NG] = {0.05, 0.02}, MOM_MU[NG] = {0.9, 0.5}, MOM_WD[NG] = {0.01, 0.0};
static const double ADAM_LR[NG] = {0.0125, 0.01}, ADAM_B1[NG] = {0.9, 0.8}, ADAM_B2[NG] = {0.99, 0.99};

static void set_momentum_options(AlrOptimizer *opt) {
    EXPECT(alr_set_option(opt, "lr", 0.05), ALR_OK, "set lr");
    EXPECT(alr_set_group_option(opt, 1, "lr", 0.02), ALR_OK, "set lr group 1");
    EXPECT(alr_set_group_option(opt, 1, "momentum", 0.5), ALR_OK, "set momentum group 1");
    EXPECT(alr_set_group_option(opt, 0, "weight_decay", 0.01), ALR_OK, "set weight_decay group 0");
}

static void set_adam_options(AlrOptimizer *opt) {
    EXPECT(alr_set_option(opt, "lr", 0.01), ALR_OK, "set lr");
    EXPECT(alr_set_group_option(opt, 0, "lr", 0.0125), ALR_OK, "set lr group 0");
    EXPECT(alr_set_group_option(opt, 1, "beta1", 0.8), ALR_OK, "set beta1 group 1");
    EXPECT(alr_set_option(opt, "beta2", 0.99), ALR_OK, "set beta2");
}

static void check_options_momentum(AlrOptimizer *opt, const char *when) {
    for (size_t k = 0; k < NG; k++) {
        CHECK(get_opt(opt, k, "lr") == MOM_LR[k], "%s: momentum lr group %zu", when, k);
        CHECK(get_opt(opt, k, "momentum") == MOM_MU[k], "%s: momentum mu group %zu", when, k);
        CHECK(get_opt(opt, k, "weight_decay") == MOM_WD[k], "%s: momentum weight_decay group %zu", when, k);
        CHECK(get_opt(opt, k, "nesterov") == 0.0, "%s: nesterov default", when);
        CHECK(get_opt(opt, k, "check_finite") == 1.0, "%s: check_finite default", when);
    }
}

static void check_options_adam(AlrOptimizer *opt, const char *when) {
    for (size_t k = 0; k < NG; k++) {
        CHECK(get_opt(opt, k, "lr") == ADAM_LR[k], "%s: adam lr group %zu", when, k);
        CHECK(get_opt(opt, k, "beta1") == ADAM_B1[k], "%s: adam beta1 group %zu", when, k);
        CHECK(get_opt(opt, k, "beta2") == ADAM_B2[k], "%s: adam beta2 group %zu", when, k);
        CHECK(get_opt(opt, k, "eps") == 1e-8, "%s: adam eps default", when);
    }
}

static void test_against_reference(void) {
    printf("momentum and adam against the float64 reference\n");
    Fix fx;
    Ref r;
    if (fix_open(&fx, "momentum")) {
        set_momentum_options(fx.opt);
        check_options_momentum(fx.opt, "momentum after set");
        ref_init(&r, &fx);
        for (int s = 0; s < 6; s++) {
            EXPECT(fix_step(&fx, s), ALR_OK, "momentum step");
            ref_momentum(&r, &fx, MOM_LR, MOM_MU, MOM_WD);
            double e = ref_max_err(&r, &fx);
            CHECK(e <= 1e-6, "momentum step %d: relative error %.3e vs float64 reference", s, e);
        }
        check_readback(fx.opt, "momentum", MOM_LR, MOM_MU, 6);
        fix_close(&fx);
    }
    if (fix_open(&fx, "adam")) {
        set_adam_options(fx.opt);
        check_options_adam(fx.opt, "adam after set");
        ref_init(&r, &fx);
        for (int s = 0; s < 6; s++) {
            EXPECT(fix_step(&fx, s), ALR_OK, "adam step");
            ref_adam(&r, &fx, ADAM_LR, ADAM_B1, ADAM_B2, 1e-8);
            double e = ref_max_err(&r, &fx);
            CHECK(e <= 1e-6, "adam step %d: relative error %.3e vs float64 reference", s, e);
        }
        check_readback(fx.opt, "adam", ADAM_LR, ADAM_B1, 6);
        fix_close(&fx);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* 2. checkpoint: save at step 3, load into a fresh optimizer, continue; bit-identical       */

static void test_resume(const char *alg, void (*set_options)(AlrOptimizer *), void (*check_options)(AlrOptimizer *, const char *)) {
    printf("%s: save at step 3, load into a fresh optimizer, continue\n", alg);
    const int K = 3, TOTAL = 7;
    Fix a, b;
    if (!fix_open(&a, alg)) return;
    set_options(a.opt);
    for (int s = 0; s < TOTAL; s++) EXPECT(fix_step(&a, s), ALR_OK, "uninterrupted step");
    size_t end_len = 0;
    uint8_t *end_state = save_state(a.opt, &end_len);

    if (!fix_open(&b, alg)) {
        free(end_state);
        fix_close(&a);
        return;
    }
    set_options(b.opt);
    for (int s = 0; s < K; s++) EXPECT(fix_step(&b, s), ALR_OK, "step before save");
    size_t size = 0, written = 0;
    EXPECT(alr_save_size(b.opt, &size), ALR_OK, "alr_save_size");
    CHECK(size > 0, "save size is 0");
    uint8_t *buf = malloc(size + 16);
    memset(buf, 0xAB, size + 16);
    EXPECT(alr_save(b.opt, buf, size + 16, &written), ALR_OK, "alr_save (roomy buffer)");
    CHECK(written == size, "alr_save wrote %zu bytes, alr_save_size said %zu", written, size);
    CHECK(buf[size] == 0xAB, "alr_save wrote past the bytes it reported");
    float params_at_k[NT][MAXLEN];
    memcpy(params_at_k, b.p, sizeof params_at_k);
    fix_close(&b);

    /* a fresh optimizer with default options: load must restore the options too */
    Fix c;
    if (fix_open(&c, alg)) {
        memcpy(c.p, params_at_k, sizeof c.p);
        EXPECT(alr_load(c.opt, buf, written), ALR_OK, "alr_load into a fresh optimizer");
        check_options(c.opt, "options after load");
        for (int s = K; s < TOTAL; s++) EXPECT(fix_step(&c, s), ALR_OK, "step after load");
        CHECK(memcmp(c.p, a.p, sizeof c.p) == 0, "%s: resumed parameters differ from the uninterrupted run", alg);
        size_t len = 0;
        uint8_t *st = save_state(c.opt, &len);
        CHECK(st && end_state && len == end_len && memcmp(st, end_state, len) == 0, "%s: resumed state differs from the uninterrupted run", alg);
        free(st);
        fix_close(&c);
    }
    free(buf);
    free(end_state);
    fix_close(&a);
}

/* ---------------------------------------------------------------------------------------- */
/* 3. every status code                                                                      */

static int cb_calls = 0;

static int32_t loss_quadratic(void *user_data, const float *const *params, size_t n_tensors, double *loss_out) {
    (void)user_data;
    cb_calls++;
    double f = 0.0;
    for (size_t t = 0; t < n_tensors && t < NT; t++)
        for (size_t i = 0; i < LENS[t]; i++) f += 0.25 * (double)params[t][i] * (double)params[t][i];
    *loss_out = f;
    return 0;
}

static int32_t loss_failing(void *user_data, const float *const *params, size_t n_tensors, double *loss_out) {
    (void)user_data;
    (void)params;
    (void)n_tensors;
    (void)loss_out;
    cb_calls++;
    return 7;
}

static int32_t grad_failing(void *user_data, const float *const *params, float *const *grads_out, size_t n_tensors) {
    (void)user_data;
    (void)params;
    (void)grads_out;
    (void)n_tensors;
    cb_calls++;
    return 3;
}

static void test_null_and_create_errors(void) {
    printf("alr_create and null pointers\n");
    AlrOptimizer *out = (AlrOptimizer *)&out; /* garbage that must be overwritten with NULL */
    AlrCreateArgs a = create_args("adam", LENS, GROUPS, NT);

    EXPECT(alr_create(NULL, &out), ALR_NULL_POINTER, "alr_create(args = NULL)");
    CHECK(out == NULL, "alr_create must set *out = NULL on failure");
    EXPECT(alr_create(&a, NULL), ALR_NULL_POINTER, "alr_create(out = NULL)");
    a.algorithm = NULL;
    EXPECT(alr_create(&a, &out), ALR_NULL_POINTER, "alr_create(algorithm = NULL)");
    a = create_args("adam", NULL, GROUPS, NT);
    EXPECT(alr_create(&a, &out), ALR_NULL_POINTER, "alr_create(lens = NULL)");

    out = (AlrOptimizer *)&out;
    EXPECT(create("adamm", LENS, GROUPS, NT, &out), ALR_INVALID_ARGUMENT, "alr_create unknown algorithm");
    CHECK(out == NULL, "alr_create must set *out = NULL on failure");
    MSG_HAS("adamm");
    MSG_HAS("sgd");
    MSG_HAS("momentum");
    MSG_HAS("adam");
    MSG_HAS("rmsprop");

    static const uint32_t gap[NT] = {0, 2, 0};
    EXPECT(create("adam", LENS, gap, NT, &out), ALR_INVALID_ARGUMENT, "alr_create groups {0,2,0} (group 1 unused)");
    MSG_HAS("group 1");
    static const uint32_t big[NT] = {0, 1, 5};
    EXPECT(create("adam", LENS, big, NT, &out), ALR_INVALID_ARGUMENT, "alr_create groups {0,1,5}");
    /* A huge group id must be refused like any other bad id, not size an allocation: run it in a
     * child process, because a library that allocates one entry per id aborts (OOM) there. */
    {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid == 0) {
            static const uint32_t huge[NT] = {0, 1, 4000000000u};
            AlrOptimizer *o = (AlrOptimizer *)&o;
            AlrStatus rc = create("adam", LENS, huge, NT, &o);
            printf("  [%-20s] %-58s -> %s\n", alr_status_name(rc), "alr_create group id 4e9 (in a child process)", alr_last_error());
            fflush(stdout);
            if (rc == ALR_OK) alr_destroy(o);
            _exit(rc == ALR_INVALID_ARGUMENT && o == NULL && alr_last_error()[0] != '\0' ? 0 : 1);
        }
        int status = 0;
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/waitpid failed");
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "alr_create with group id 4000000000 must return ALR_INVALID_ARGUMENT; the child %s %d",
              WIFSIGNALED(status) ? "was killed by signal" : "exited with", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    }
    static const size_t zero_len[NT] = {13, 0, 9};
    EXPECT(create("adam", zero_len, GROUPS, NT, &out), ALR_INVALID_ARGUMENT, "alr_create zero-length tensor");
    EXPECT(create("adam", LENS, GROUPS, 0, &out), ALR_INVALID_ARGUMENT, "alr_create n_tensors = 0");

    a = create_args("adam", LENS, GROUPS, NT);
    a.struct_size = sizeof a - 1;
    EXPECT(alr_create(&a, &out), ALR_INVALID_ARGUMENT, "alr_create struct_size too small");
    MSG_HAS("struct_size");
    a.struct_size = 0;
    EXPECT(alr_create(&a, &out), ALR_INVALID_ARGUMENT, "alr_create struct_size = 0");

    a = create_args("adam", LENS, GROUPS, NT);
    a.device = ALR_DEVICE_CUDA;
    out = (AlrOptimizer *)&out;
    EXPECT(alr_create(&a, &out), ALR_UNSUPPORTED, "alr_create on ALR_DEVICE_CUDA (CPU build)");
    CHECK(out == NULL, "alr_create must set *out = NULL on failure");
    MSG_HAS("CUDA");
    a.device = 7; /* not an AlrDevice: C may send any int */
    EXPECT(alr_create(&a, &out), ALR_INVALID_ARGUMENT, "alr_create with device 7");
    MSG_HAS("device is 7");
    CHECK(strcmp(alr_status_name(42), "ALR_UNKNOWN_STATUS") == 0, "alr_status_name(42) is '%s'", alr_status_name(42));

    /* a caller compiled against the first header (before `sharded`) passes that struct: accepted */
    a = create_args("adam", LENS, GROUPS, NT);
    a.struct_size = offsetof(AlrCreateArgs, sharded);
    a.sharded = 7; /* beyond that struct_size: never read */
    EXPECT(alr_create(&a, &out), ALR_OK, "alr_create with the first header's struct_size");
    EXPECT(alr_destroy(out), ALR_OK, "alr_destroy");
    a.struct_size = offsetof(AlrCreateArgs, sharded) + 4;
    EXPECT(alr_create(&a, &out), ALR_INVALID_ARGUMENT, "alr_create with a struct_size between the two versions");
    MSG_HAS("struct_size");

    /* sharded tensors: the flag and the reduce callback go together */
    a = create_args("auto-adam", LENS, GROUPS, NT);
    a.sharded = 1;
    EXPECT(alr_create(&a, &out), ALR_INVALID_ARGUMENT, "alr_create sharded without reduce");
    MSG_HAS("reduce is NULL");
    a.sharded = 2;
    EXPECT(alr_create(&a, &out), ALR_INVALID_ARGUMENT, "alr_create sharded = 2");
    MSG_HAS("sharded is 2");
    a.sharded = 0;
    a.reduce = identity_reduce;
    EXPECT(alr_create(&a, &out), ALR_INVALID_ARGUMENT, "alr_create reduce without sharded");
    MSG_HAS("sharded is 0");
    a.sharded = 1;
    if (EXPECT(alr_create(&a, &out), ALR_OK, "alr_create sharded auto-adam")) EXPECT(alr_destroy(out), ALR_OK, "alr_destroy");

    /* a caller compiled against a newer header passes a larger struct: accepted */
    struct {
        AlrCreateArgs args;
        uint64_t appended_field;
    } bigger;
    memset(&bigger, 0, sizeof bigger);
    bigger.args = create_args("sgd", LENS, GROUPS, NT);
    bigger.args.struct_size = sizeof bigger;
    bigger.appended_field = 42;
    EXPECT(alr_create(&bigger.args, &out), ALR_OK, "alr_create with a larger struct_size");
    EXPECT(alr_destroy(out), ALR_OK, "alr_destroy");

    /* a string option on an algorithm that has none */
    if (EXPECT(create("adam", LENS, GROUPS, NT, &out), ALR_OK, "alr_create adam")) {
        EXPECT(alr_set_option_str(out, "base", "sgd"), ALR_INVALID_ARGUMENT, "alr_set_option_str 'base' on adam");
        EXPECT(alr_destroy(out), ALR_OK, "alr_destroy");
    }

    /* handle arguments */
    double v = 0;
    size_t n = 0;
    EXPECT(alr_destroy(NULL), ALR_OK, "alr_destroy(NULL) is a no-op");
    EXPECT(alr_set_option(NULL, "lr", 0.1), ALR_NULL_POINTER, "alr_set_option(opt = NULL)");
    EXPECT(alr_get_lr(NULL, 0, &v), ALR_NULL_POINTER, "alr_get_lr(opt = NULL)");
    EXPECT(alr_n_groups(NULL, &n), ALR_NULL_POINTER, "alr_n_groups(opt = NULL)");
    EXPECT(alr_report_loss(NULL, 1.0), ALR_NULL_POINTER, "alr_report_loss(opt = NULL)");

    /* version and status names */
    CHECK(strcmp(alr_version(), ALR_VERSION) == 0, "alr_version '%s' != ALR_VERSION '%s'", alr_version(), ALR_VERSION);
    CHECK(alr_abi_version() == ALR_ABI_VERSION, "alr_abi_version %u != %d", alr_abi_version(), ALR_ABI_VERSION);
    static const char *names[] = {"ALR_OK", "ALR_NULL_POINTER", "ALR_INVALID_ARGUMENT", "ALR_SHAPE_MISMATCH",
                                  "ALR_NON_FINITE", "ALR_WRONG_STATE", "ALR_UNSUPPORTED", "ALR_CUDA_ERROR",
                                  "ALR_CALLBACK_FAILED", "ALR_BAD_CHECKPOINT", "ALR_PANIC"};
    for (int s = 0; s <= ALR_PANIC; s++)
        CHECK(strcmp(alr_status_name((AlrStatus)s), names[s]) == 0, "alr_status_name(%d) = %s", s, alr_status_name((AlrStatus)s));
}

static void test_stale_handle(void) {
    printf("stale handle after alr_destroy\n");
    AlrOptimizer *opt = NULL;
    if (!EXPECT(create("adam", LENS, GROUPS, NT, &opt), ALR_OK, "alr_create")) return;
    EXPECT(alr_destroy(opt), ALR_OK, "alr_destroy");
    /* No alr_create in between: the freed address cannot have been handed out again. */
    Fix fx;
    memset(&fx, 0, sizeof fx);
    init_params(&fx);
    make_grads(&fx, 0);
    fix_args(&fx);
    float before[NT][MAXLEN];
    memcpy(before, fx.p, sizeof before);
    double v = 0;
    size_t n = 0;
    EXPECT(alr_step(opt, &fx.args), ALR_INVALID_ARGUMENT, "alr_step on a destroyed handle");
    MSG_HAS("not a live optimizer");
    CHECK(memcmp(before, fx.p, sizeof before) == 0, "alr_step on a stale handle changed the parameters");
    EXPECT(alr_set_option(opt, "lr", 0.1), ALR_INVALID_ARGUMENT, "alr_set_option on a destroyed handle");
    EXPECT(alr_get_lr(opt, 0, &v), ALR_INVALID_ARGUMENT, "alr_get_lr on a destroyed handle");
    EXPECT(alr_save_size(opt, &n), ALR_INVALID_ARGUMENT, "alr_save_size on a destroyed handle");
    {
        /* issue 17, item 5: alr_load returns ALR_INVALID_ARGUMENT here, and its header comment says so */
        uint8_t bytes[32] = {0};
        EXPECT(alr_load(opt, bytes, sizeof bytes), ALR_INVALID_ARGUMENT, "alr_load on a destroyed handle");
        FILE *h = fopen("include/autolr.h", "r");
        CHECK(h != NULL, "include/autolr.h not found (run from the repository root, as run.sh does)");
        if (h) {
            static char text[1 << 17];
            size_t got = fread(text, 1, sizeof text - 1, h);
            text[got] = 0;
            fclose(h);
            char *decl = strstr(text, "AlrStatus alr_load(");
            char *doc = decl;
            /* the comment block right above the declaration: back to the end of the previous declaration */
            while (doc && doc - text >= 3 && !(doc[-1] == '\n' && doc[-2] == ';' && doc[-3] == ')')) doc--;
            CHECK(decl != NULL, "alr_load is not declared in include/autolr.h");
            if (decl) {
                char saved = *decl;
                *decl = 0;
                CHECK(strstr(doc, "ALR_INVALID_ARGUMENT") != NULL, "alr_load's header comment does not list ALR_INVALID_ARGUMENT, which it returns");
                CHECK(strstr(doc, "ALR_WRONG_STATE") != NULL, "alr_load's header comment does not list ALR_WRONG_STATE, which it returns");
                *decl = saved;
            }
        }
    }
    EXPECT(alr_destroy(opt), ALR_INVALID_ARGUMENT, "alr_destroy twice");
    int not_a_handle = 0;
    EXPECT(alr_destroy((AlrOptimizer *)&not_a_handle), ALR_INVALID_ARGUMENT, "alr_destroy on a foreign pointer");
}

static void test_errors_on_live_optimizer(void) {
    printf("failed calls on a live adam optimizer leave parameters and state bit-identical\n");
    Fix fx;
    if (!fix_open(&fx, "adam")) return;
    set_adam_options(fx.opt);
    for (int s = 0; s < 3; s++) EXPECT(fix_step(&fx, s), ALR_OK, "adam step");
    make_grads(&fx, 3);
    fix_args(&fx);
    Snap s;
    snap_take(&fx, &s);
    double v = 0;
    size_t n = 0;
    AlrStepArgs a;

    /* ALR_NULL_POINTER */
    FAILS(&fx, &s, alr_step(fx.opt, NULL), ALR_NULL_POINTER, "alr_step(args = NULL)");
    a = fx.args;
    a.params = NULL;
    FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_NULL_POINTER, "alr_step(params = NULL)");
    a = fx.args;
    a.grads = NULL;
    FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_NULL_POINTER, "alr_step(grads = NULL)");
    {
        const float *grads_with_hole[NT] = {fx.g[0], NULL, fx.g[2]};
        a = fx.args;
        a.grads = grads_with_hole;
        FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_NULL_POINTER, "alr_step(grads[1] = NULL)");
        MSG_HAS("grads[1]");
    }
    {
        float *params_with_hole[NT] = {fx.p[0], fx.p[1], NULL};
        a = fx.args;
        a.params = params_with_hole;
        FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_NULL_POINTER, "alr_step(params[2] = NULL)");
    }
    FAILS(&fx, &s, alr_step(NULL, &fx.args), ALR_NULL_POINTER, "alr_step(opt = NULL)");
    FAILS(&fx, &s, alr_set_option(fx.opt, NULL, 0.1), ALR_NULL_POINTER, "alr_set_option(name = NULL)");
    FAILS(&fx, &s, alr_set_group_option(fx.opt, 0, NULL, 0.1), ALR_NULL_POINTER, "alr_set_group_option(name = NULL)");
    FAILS(&fx, &s, alr_get_option(fx.opt, 0, "lr", NULL), ALR_NULL_POINTER, "alr_get_option(value = NULL)");
    FAILS(&fx, &s, alr_get_option(fx.opt, 0, NULL, &v), ALR_NULL_POINTER, "alr_get_option(name = NULL)");
    FAILS(&fx, &s, alr_get_lr(fx.opt, 0, NULL), ALR_NULL_POINTER, "alr_get_lr(out = NULL)");
    FAILS(&fx, &s, alr_get_momentum(fx.opt, 0, NULL), ALR_NULL_POINTER, "alr_get_momentum(out = NULL)");
    FAILS(&fx, &s, alr_n_groups(fx.opt, NULL), ALR_NULL_POINTER, "alr_n_groups(out = NULL)");
    FAILS(&fx, &s, alr_telemetry_count(fx.opt, 0, NULL), ALR_NULL_POINTER, "alr_telemetry_count(count = NULL)");
    {
        const char *name = NULL;
        FAILS(&fx, &s, alr_telemetry_entry(fx.opt, 0, 0, NULL, &v), ALR_NULL_POINTER, "alr_telemetry_entry(name = NULL)");
        FAILS(&fx, &s, alr_telemetry_entry(fx.opt, 0, 0, &name, NULL), ALR_NULL_POINTER, "alr_telemetry_entry(value = NULL)");
    }
    FAILS(&fx, &s, alr_save_size(fx.opt, NULL), ALR_NULL_POINTER, "alr_save_size(size = NULL)");
    FAILS(&fx, &s, alr_save(fx.opt, NULL, 100, &n), ALR_NULL_POINTER, "alr_save(buf = NULL)");
    {
        uint8_t small[4];
        FAILS(&fx, &s, alr_save(fx.opt, small, sizeof small, NULL), ALR_NULL_POINTER, "alr_save(written = NULL)");
    }
    FAILS(&fx, &s, alr_load(fx.opt, NULL, 10), ALR_NULL_POINTER, "alr_load(buf = NULL)");
    FAILS(&fx, &s, alr_set_option_str(fx.opt, "base", NULL), ALR_NULL_POINTER, "alr_set_option_str(value = NULL)");

    /* ALR_INVALID_ARGUMENT */
    FAILS(&fx, &s, alr_set_option(fx.opt, "learning_rate", 0.1), ALR_INVALID_ARGUMENT, "alr_set_option unknown name");
    MSG_HAS("learning_rate");
    MSG_HAS("lr");
    MSG_HAS("beta1");
    MSG_HAS("beta2");
    MSG_HAS("eps");
    MSG_HAS("weight_decay");
    FAILS(&fx, &s, alr_get_option(fx.opt, 0, "momentum", &v), ALR_INVALID_ARGUMENT, "alr_get_option unknown name (adam has no 'momentum')");
    FAILS(&fx, &s, alr_set_option(fx.opt, "lr", -0.1), ALR_INVALID_ARGUMENT, "alr_set_option lr = -0.1");
    MSG_HAS("lr");
    FAILS(&fx, &s, alr_set_option(fx.opt, "beta1", 1.0), ALR_INVALID_ARGUMENT, "alr_set_option beta1 = 1");
    FAILS(&fx, &s, alr_set_option(fx.opt, "eps", 0.0), ALR_INVALID_ARGUMENT, "alr_set_option eps = 0");
    FAILS(&fx, &s, alr_set_option(fx.opt, "lr", NAN), ALR_INVALID_ARGUMENT, "alr_set_option lr = NaN");
    FAILS(&fx, &s, alr_set_option(fx.opt, "lr", INFINITY), ALR_INVALID_ARGUMENT, "alr_set_option lr = inf");
    FAILS(&fx, &s, alr_set_option(fx.opt, "check_finite", 0.5), ALR_INVALID_ARGUMENT, "alr_set_option flag = 0.5");
    FAILS(&fx, &s, alr_set_group_option(fx.opt, 1, "beta2", 1.5), ALR_INVALID_ARGUMENT, "alr_set_group_option beta2 = 1.5");
    FAILS(&fx, &s, alr_set_group_option(fx.opt, 2, "lr", 0.1), ALR_INVALID_ARGUMENT, "alr_set_group_option group 2 of 2");
    MSG_HAS("group 2");
    FAILS(&fx, &s, alr_set_group_option(fx.opt, (size_t)-1, "lr", 0.1), ALR_INVALID_ARGUMENT, "alr_set_group_option group SIZE_MAX");
    FAILS(&fx, &s, alr_set_group_option(fx.opt, 0, "check_finite", 0.0), ALR_INVALID_ARGUMENT, "alr_set_group_option on a global option");
    FAILS(&fx, &s, alr_get_option(fx.opt, 2, "lr", &v), ALR_INVALID_ARGUMENT, "alr_get_option group 2 of 2");
    FAILS(&fx, &s, alr_get_lr(fx.opt, 2, &v), ALR_INVALID_ARGUMENT, "alr_get_lr group 2 of 2");
    FAILS(&fx, &s, alr_get_momentum(fx.opt, 7, &v), ALR_INVALID_ARGUMENT, "alr_get_momentum group 7 of 2");
    FAILS(&fx, &s, alr_telemetry_count(fx.opt, 2, &n), ALR_INVALID_ARGUMENT, "alr_telemetry_count group 2 of 2");
    {
        const char *name = NULL;
        FAILS(&fx, &s, alr_telemetry_entry(fx.opt, 0, 1000, &name, &v), ALR_INVALID_ARGUMENT, "alr_telemetry_entry index 1000");
    }
    a = fx.args;
    a.struct_size = sizeof a - 8;
    FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_INVALID_ARGUMENT, "alr_step struct_size too small");
    MSG_HAS("struct_size");
    {
        float neg[NT][MAXLEN];
        const float *negp[NT] = {neg[0], neg[1], neg[2]};
        memset(neg, 0, sizeof neg);
        a = fx.args;
        a.sum_sq = negp;
        a.per_sample = negp;
        a.batch_size = 4;
        FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_INVALID_ARGUMENT, "alr_step with both sum_sq and per_sample");
    }
    {
        uint8_t small[8];
        memset(small, 0xAB, sizeof small);
        n = 12345;
        FAILS(&fx, &s, alr_save(fx.opt, small, sizeof small, &n), ALR_INVALID_ARGUMENT, "alr_save into an 8-byte buffer");
        int untouched = 1;
        for (size_t i = 0; i < sizeof small; i++) untouched &= small[i] == 0xAB;
        CHECK(untouched, "alr_save wrote into a buffer that was too small");
        FAILS(&fx, &s, alr_save(fx.opt, small, s.len - 1, &n), ALR_INVALID_ARGUMENT, "alr_save capacity one byte short");
    }

    /* ALR_SHAPE_MISMATCH */
    a = fx.args;
    a.n_tensors = 2;
    FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_SHAPE_MISMATCH, "alr_step n_tensors = 2 of 3");
    a.n_tensors = 4;
    FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_SHAPE_MISMATCH, "alr_step n_tensors = 4 of 3");

    /* ALR_NON_FINITE: a bad value in the last tensor, so the first ones would already be done
     * if validation were not complete before the update */
    {
        float keep = fx.g[2][8];
        fx.g[2][8] = NAN;
        FAILS(&fx, &s, alr_step(fx.opt, &fx.args), ALR_NON_FINITE, "alr_step NaN in grads[2][8]");
        MSG_HAS("tensor 2");
        fx.g[2][8] = INFINITY;
        FAILS(&fx, &s, alr_step(fx.opt, &fx.args), ALR_NON_FINITE, "alr_step +inf in grads[2][8]");
        fx.g[2][8] = keep;
        keep = fx.g[0][0];
        fx.g[0][0] = -INFINITY;
        FAILS(&fx, &s, alr_step(fx.opt, &fx.args), ALR_NON_FINITE, "alr_step -inf in grads[0][0]");
        fx.g[0][0] = keep;
    }

    /* ALR_WRONG_STATE: no fixed-rate algorithm has a structural option, so use the GI-only call */
    FAILS(&fx, &s, alr_report_loss(fx.opt, 1.0), ALR_WRONG_STATE, "alr_report_loss on adam");

    /* ALR_UNSUPPORTED: inputs adam does not use */
    {
        float sq[NT][MAXLEN];
        const float *sqp[NT] = {sq[0], sq[1], sq[2]};
        for (size_t t = 0; t < NT; t++)
            for (size_t i = 0; i < MAXLEN; i++) sq[t][i] = 4.0f * fx.g[t][i] * fx.g[t][i];
        a = fx.args;
        a.sum_sq = sqp;
        a.batch_size = 4;
        FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_UNSUPPORTED, "alr_step sum_sq to adam");
        MSG_HAS("adam");
        a = fx.args;
        a.curvature = sqp;
        FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_UNSUPPORTED, "alr_step curvature to adam");
        a = fx.args;
        a.has_loss = 1;
        a.loss = 1.0;
        FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_UNSUPPORTED, "alr_step loss to adam");
        a = fx.args;
        a.loss_fn = loss_quadratic;
        cb_calls = 0;
        FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_UNSUPPORTED, "alr_step loss_fn to adam");
        CHECK(cb_calls == 0, "a refused loss callback was called %d times", cb_calls);
        a = fx.args;
        a.grad_fn = grad_failing;
        FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_UNSUPPORTED, "alr_step grad_fn to adam");
        CHECK(cb_calls == 0, "a refused gradient callback was called %d times", cb_calls);
    }

    /* ALR_BAD_CHECKPOINT */
    {
        uint8_t *buf = malloc(s.len + 1);
        memcpy(buf, s.state, s.len);
        FAILS(&fx, &s, alr_load(fx.opt, buf, s.len - 1), ALR_BAD_CHECKPOINT, "alr_load truncated by 1 byte");
        FAILS(&fx, &s, alr_load(fx.opt, buf, s.len - 8), ALR_BAD_CHECKPOINT, "alr_load without its checksum");
        FAILS(&fx, &s, alr_load(fx.opt, buf, 11), ALR_BAD_CHECKPOINT, "alr_load 11 bytes");
        FAILS(&fx, &s, alr_load(fx.opt, buf, 0), ALR_BAD_CHECKPOINT, "alr_load 0 bytes");
        FAILS(&fx, &s, alr_load(fx.opt, buf, SIZE_MAX), ALR_BAD_CHECKPOINT, "alr_load SIZE_MAX bytes");
        buf[s.len] = 0;
        FAILS(&fx, &s, alr_load(fx.opt, buf, s.len + 1), ALR_BAD_CHECKPOINT, "alr_load with a trailing byte");
        size_t positions[] = {0, 8, 20, s.len / 2, s.len - 20, s.len - 9, s.len - 1};
        for (size_t k = 0; k < sizeof positions / sizeof positions[0]; k++) {
            char what[96];
            snprintf(what, sizeof what, "alr_load byte %zu of %zu flipped", positions[k], s.len);
            buf[positions[k]] ^= 0x10;
            FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, what);
            buf[positions[k]] ^= 0x10;
        }
        CHECK(memcmp(buf, s.state, s.len) == 0, "test bug: buffer not restored");
        free(buf);
    }
    {
        /* other algorithm (same tensors and groups) */
        Fix m;
        if (fix_open(&m, "momentum")) {
            EXPECT(fix_step(&m, 0), ALR_OK, "momentum step");
            size_t len = 0;
            uint8_t *other = save_state(m.opt, &len);
            FAILS(&fx, &s, alr_load(fx.opt, other, len), ALR_BAD_CHECKPOINT, "alr_load a momentum checkpoint into adam");
            MSG_HAS("momentum");
            free(other);
            fix_close(&m);
        }
        /* other tensor sizes, other groups */
        static const size_t other_lens[NT] = {13, 4, 8};
        AlrOptimizer *o = NULL;
        if (EXPECT(create("adam", other_lens, GROUPS, NT, &o), ALR_OK, "alr_create adam other sizes")) {
            size_t len = 0;
            uint8_t *other = save_state(o, &len);
            FAILS(&fx, &s, alr_load(fx.opt, other, len), ALR_BAD_CHECKPOINT, "alr_load a checkpoint of other tensor sizes");
            free(other);
            EXPECT(alr_destroy(o), ALR_OK, "alr_destroy");
        }
        if (EXPECT(create("adam", LENS, NULL, NT, &o), ALR_OK, "alr_create adam 3 groups")) {
            size_t len = 0;
            uint8_t *other = save_state(o, &len);
            FAILS(&fx, &s, alr_load(fx.opt, other, len), ALR_BAD_CHECKPOINT, "alr_load a checkpoint of other groups");
            free(other);
            EXPECT(alr_destroy(o), ALR_OK, "alr_destroy");
        }
        static const size_t two_lens[2] = {13, 4};
        if (EXPECT(create("adam", two_lens, NULL, 2, &o), ALR_OK, "alr_create adam 2 tensors")) {
            size_t len = 0;
            uint8_t *other = save_state(o, &len);
            FAILS(&fx, &s, alr_load(fx.opt, other, len), ALR_BAD_CHECKPOINT, "alr_load a checkpoint of 2 tensors");
            free(other);
            EXPECT(alr_destroy(o), ALR_OK, "alr_destroy");
        }
    }

    /* ALR_PANIC: the library survives it and the optimizer still works */
    {
        /* ... and prints nothing: the message goes to alr_last_error only (issue 17, item 4).
         * stderr is pointed at a temporary file for the call; RUST_BACKTRACE=1 would make
         * Rust's default hook print a backtrace too. */
        setenv("RUST_BACKTRACE", "1", 1);
        fflush(stderr);
        FILE *tmp = tmpfile();
        int saved = dup(2);
        CHECK(tmp != NULL && saved >= 0, "tmpfile/dup failed");
        if (tmp && saved >= 0) {
            dup2(fileno(tmp), 2);
            AlrStatus rc = alr_selftest_panic();
            const char *msg = alr_last_error();
            snprintf(last_msg, sizeof last_msg, "%s", msg);
            fflush(stderr);
            dup2(saved, 2);
            close(saved);
            long printed = ftell(tmp) >= 0 ? (fseek(tmp, 0, SEEK_END), ftell(tmp)) : -1;
            char head[256] = {0};
            rewind(tmp);
            size_t got = fread(head, 1, sizeof head - 1, tmp);
            head[got] = 0;
            fclose(tmp);
            CHECK(rc == ALR_PANIC, "alr_selftest_panic returned %s", alr_status_name(rc));
            CHECK(printed == 0, "a caught panic printed %ld bytes to stderr: '%s'", printed, head);
            printf("  [%-20s] %-58s -> %s\n", alr_status_name(rc), "alr_selftest_panic (stderr captured: 0 bytes)", last_msg);
            MSG_HAS("alr_selftest_panic was called");
            MSG_HAS("api.rs"); /* the location, which the default hook would have printed */
            UNCHANGED(&fx, &s, "alr_selftest_panic");
        }
        unsetenv("RUST_BACKTRACE");
    }

    /* after all that, the optimizer still works and still matches an untouched twin */
    EXPECT(alr_step(fx.opt, &fx.args), ALR_OK, "alr_step after the failures");
    {
        Fix twin;
        if (fix_open(&twin, "adam")) {
            set_adam_options(twin.opt);
            for (int k = 0; k < 4; k++) EXPECT(fix_step(&twin, k), ALR_OK, "twin step");
            CHECK(memcmp(twin.p, fx.p, sizeof twin.p) == 0, "failed calls changed the trajectory");
            fix_close(&twin);
        }
    }
    snap_free(&s);
    fix_close(&fx);
}

/* FNV-1a 64 over the body, stored little-endian in the last 8 bytes (src/checkpoint.rs). */
static void reseal(uint8_t *buf, size_t len) {
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len - 8; i++) {
        h ^= buf[i];
        h *= 0x00000100000001b3ULL;
    }
    for (int k = 0; k < 8; k++) buf[len - 8 + (size_t)k] = (uint8_t)(h >> (8 * k));
}

/* Buffers whose checksum is right but whose content is not: the checks behind the checksum. */
static void test_resealed_checkpoints(void) {
    printf("checkpoints with a valid checksum but bad content\n");
    Fix fx;
    if (!fix_open(&fx, "adam")) return;
    set_adam_options(fx.opt);
    EXPECT(fix_step(&fx, 0), ALR_OK, "adam step");
    Snap s;
    snap_take(&fx, &s);
    uint8_t *buf = malloc(s.len);

    memcpy(buf, s.state, s.len);
    reseal(buf, s.len);
    CHECK(memcmp(buf, s.state, s.len) == 0, "test's FNV-1a differs from the library's");

    memcpy(buf, s.state, s.len);
    buf[8] ^= 0x02; /* format version, right after the 8-byte magic */
    reseal(buf, s.len);
    FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, "alr_load other format version (resealed)");

    /* an option value out of range: find lr = 0.0125 (group 0) and make it -1 */
    memcpy(buf, s.state, s.len);
    double lr = 0.0125, bad = -1.0;
    size_t at = 0;
    for (size_t i = 0; i + 8 <= s.len - 8; i++)
        if (memcmp(buf + i, &lr, 8) == 0) {
            at = i;
            break;
        }
    CHECK(at > 0, "lr = 0.0125 not found in the checkpoint (little-endian f64 expected)");
    if (at > 0) {
        memcpy(buf + at, &bad, 8);
        reseal(buf, s.len);
        FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, "alr_load option lr = -1 (resealed)");
    }
    /* the algorithm name 'adam' -> 'adan' */
    memcpy(buf, s.state, s.len);
    for (size_t i = 12; i + 4 <= s.len; i++)
        if (memcmp(buf + i, "adam", 4) == 0) {
            buf[i + 3] = 'n';
            break;
        }
    reseal(buf, s.len);
    FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, "alr_load algorithm 'adan' (resealed)");
    /* states no Adam run can produce: the state section ends with the last element's [m, v],
       just before the 8-byte checksum */
    const float negative = -1.0f, nan = NAN;
    memcpy(buf, s.state, s.len);
    memcpy(buf + s.len - 8 - 4, &negative, 4);
    reseal(buf, s.len);
    FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, "alr_load Adam v = -1 (resealed)");
    CHECK(strstr(last_msg, "impossible") != NULL, "the v < 0 message says the state is impossible: %s", last_msg);
    memcpy(buf, s.state, s.len);
    memcpy(buf + s.len - 8 - 8, &nan, 4);
    reseal(buf, s.len);
    FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, "alr_load Adam m = NaN (resealed)");

    /* The `started` flag (a u32 right before the state section's own name, "adam"): 2 is no
       flag, and 0 on a trained state would let a structural option change drop it. */
    static const uint8_t name_field[12] = {4, 0, 0, 0, 0, 0, 0, 0, 'a', 'd', 'a', 'm'};
    size_t inner = 0;
    for (size_t i = 12 + 12; i + 12 <= s.len; i++)
        if (memcmp(s.state + i, name_field, 12) == 0) inner = i; /* the last one: the state section's */
    CHECK(inner > 4, "the state section's name was not found");
    if (inner > 4) {
        for (uint32_t flag = 0; flag <= 2; flag += 2) {
            memcpy(buf, s.state, s.len);
            memcpy(buf + inner - 4, &flag, 4);
            reseal(buf, s.len);
            FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, flag == 0 ? "alr_load started = 0 on a trained state" : "alr_load started = 2");
        }
        /* The state section names its algorithm: another name there is refused. */
        memcpy(buf, s.state, s.len);
        buf[inner + 11] = 'w';
        reseal(buf, s.len);
        FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, "alr_load a state section named 'adaw'");
        /* The per-group step counts follow: u64 count of groups, then a u64 per group. A count
           beyond any training run (2^53 + 1) is refused; 2^31 loads, and the step after it stays
           finite (its bias correction is not that of a negative step number). */
        size_t counts = inner + 12 + 8;
        uint64_t huge = (1ULL << 53) + 1, long_run = 1ULL << 31;
        memcpy(buf, s.state, s.len);
        memcpy(buf + counts, &huge, 8);
        reseal(buf, s.len);
        FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, "alr_load a step count of 2^53 + 1");
        memcpy(buf, s.state, s.len);
        memcpy(buf + counts, &long_run, 8);
        reseal(buf, s.len);
        EXPECT(alr_load(fx.opt, buf, s.len), ALR_OK, "alr_load a step count of 2^31");
        EXPECT(fix_step(&fx, 1), ALR_OK, "a step after 2^31 steps");
        int finite = 1;
        for (size_t t = 0; t < NT; t++)
            for (size_t i = 0; i < LENS[t]; i++) finite &= isfinite(fx.p[t][i]) != 0;
        CHECK(finite, "Adam's step after 2^31 steps made a parameter non-finite");
    }
    free(buf);
    snap_free(&s);
    fix_close(&fx);
}

/* ---------------------------------------------------------------------------------------- */
/* 4. sizes no buffer can have (issue 17, item 1): refused before any slice of them is formed */

/* Bytes of the saved state of a live optimizer (NULL on failure); the caller frees it. */
static uint8_t *state_of(AlrOptimizer *opt, size_t *len) {
    uint8_t *st = save_state(opt, len);
    CHECK(st != NULL, "alr_save failed: %s", alr_last_error());
    return st;
}

/* One-tensor optimizer of `len` floats, a step with per-sample data of batch size `n` whose
 * N·len fits in size_t but whose N·len·4 bytes do not fit in isize: ALR_INVALID_ARGUMENT, and
 * parameters and state bit-identical. The per-sample buffer is 8 floats: a library that formed a
 * slice of N·len floats and read it would crash (SIGSEGV) or trip valgrind/ASan here. */
static void impossible_batch(const char *alg, size_t len, size_t n, int with_curvature) {
    char what[128];
    snprintf(what, sizeof what, "%s: len %zu, per_sample batch_size %zu", alg, len, n);
    AlrOptimizer *opt = NULL;
    size_t lens[1] = {len};
    if (!EXPECT(create(alg, lens, NULL, 1, &opt), ALR_OK, "alr_create for the size checks")) return;
    float *p = malloc(len * sizeof *p), *g = malloc(len * sizeof *g), *h = malloc(len * sizeof *h), *before = malloc(len * sizeof *before);
    float rows[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    for (size_t i = 0; i < len; i++) {
        p[i] = (float)i * 0.5f;
        g[i] = 0.25f;
        h[i] = 1.0f;
    }
    memcpy(before, p, len * sizeof *p);
    size_t slen = 0;
    uint8_t *s0 = state_of(opt, &slen);
    float *pp[1] = {p};
    const float *gp[1] = {g}, *hp[1] = {h}, *mp[1] = {rows};
    AlrStepArgs a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.n_tensors = 1;
    a.params = pp;
    a.grads = gp;
    a.per_sample = mp;
    a.batch_size = n;
    if (with_curvature) a.curvature = hp;
    EXPECT(alr_step(opt, &a), ALR_INVALID_ARGUMENT, what);
    MSG_HAS("larger than any buffer");
    CHECK(memcmp(p, before, len * sizeof *p) == 0, "%s: parameters changed by a failed call", what);
    size_t nlen = 0;
    uint8_t *s1 = state_of(opt, &nlen);
    CHECK(s0 && s1 && slen == nlen && memcmp(s0, s1, slen) == 0, "%s: state changed by a failed call", what);
    free(s0);
    free(s1);
    free(p);
    free(g);
    free(h);
    free(before);
    EXPECT(alr_destroy(opt), ALR_OK, "alr_destroy");
}

static AlrDLTensor dl_tensor(float *data, int32_t ndim, const int64_t *shape) {
    AlrDLTensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.device.device_type = 1; /* kDLCPU */
    t.ndim = ndim;
    t.dtype.code = 2; /* kDLFloat */
    t.dtype.bits = 32;
    t.dtype.lanes = 1;
    t.shape = shape;
    return t;
}

static void test_impossible_sizes(void) {
    printf("sizes no buffer can have: per-sample batch sizes and DLPack shapes\n");
    impossible_batch("auto-sgd", 5, (size_t)1 << 61, 0);
    impossible_batch("vsgd-l", 5, (size_t)1 << 61, 1);
    impossible_batch("auto-adam", ((size_t)1 << 21) + 1, (size_t)1 << 40, 0);
    impossible_batch("auto-adam", 5, SIZE_MAX / 5, 0);

    /* DLPack: a per_sample shape [2^61, 5], and shapes whose element product wraps around 2^64
     * to the registered 5 (3 x 6148914691236517207 = 2^64 + 5) */
    AlrOptimizer *opt = NULL;
    size_t lens[1] = {5};
    if (!EXPECT(create("auto-sgd", lens, NULL, 1, &opt), ALR_OK, "alr_create auto-sgd 5")) return;
    float p[5] = {1, 2, 3, 4, 5}, g[5] = {1, 1, 1, 1, 1}, rows[10] = {0};
    float before[5];
    memcpy(before, p, sizeof p);
    size_t slen = 0;
    uint8_t *s0 = state_of(opt, &slen);
    static const int64_t shape5[1] = {5}, shape_rows[2] = {(int64_t)1 << 61, 5}, wraps[2] = {3, 6148914691236517207LL};
    static const int64_t wraps_rows[3] = {2, 3, 6148914691236517207LL}, huge3[3] = {(int64_t)1 << 32, (int64_t)1 << 32, 5};
    struct {
        const char *what;
        int32_t pndim, mndim;
        const int64_t *pshape, *mshape;
    } cases[] = {
        {"alr_step_dlpack per_sample shape [2^61, 5]", 1, 2, shape5, shape_rows},
        {"alr_step_dlpack param shape [3, 6148914691236517207] (wraps to 5)", 2, 0, wraps, NULL},
        {"alr_step_dlpack per_sample shape [2, 3, 6148914691236517207]", 1, 3, shape5, wraps_rows},
        {"alr_step_dlpack param shape [2^32, 2^32, 5]", 3, 0, huge3, NULL},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        AlrDLTensor tp = dl_tensor(p, cases[k].pndim, cases[k].pshape), tg = dl_tensor(g, 1, shape5);
        AlrDLTensor tm = dl_tensor(rows, cases[k].mndim, cases[k].mshape);
        const AlrDLTensor *lp[1] = {&tp}, *lg[1] = {&tg}, *lm[1] = {&tm};
        AlrDLStepArgs a;
        memset(&a, 0, sizeof a);
        a.struct_size = sizeof a;
        a.n_tensors = 1;
        a.params = lp;
        a.grads = lg;
        if (cases[k].mshape) a.per_sample = lm;
        else {
            a.sum_sq = lg;
            a.batch_size = 4;
        }
        EXPECT(alr_step_dlpack(opt, &a), ALR_INVALID_ARGUMENT, cases[k].what);
        MSG_HAS("more elements than any float32 buffer");
        CHECK(memcmp(p, before, sizeof p) == 0, "%s: parameters changed by a failed call", cases[k].what);
        size_t nlen = 0;
        uint8_t *s1 = state_of(opt, &nlen);
        CHECK(s0 && s1 && slen == nlen && memcmp(s0, s1, slen) == 0, "%s: state changed by a failed call", cases[k].what);
        free(s1);
    }
    /* the good shape still steps (so the refusals above are not of everything) */
    {
        AlrDLTensor tp = dl_tensor(p, 1, shape5), tg = dl_tensor(g, 1, shape5);
        const AlrDLTensor *lp[1] = {&tp}, *lg[1] = {&tg};
        AlrDLStepArgs a;
        memset(&a, 0, sizeof a);
        a.struct_size = sizeof a;
        a.n_tensors = 1;
        a.params = lp;
        a.grads = lg;
        a.sum_sq = lg;
        a.batch_size = 4;
        EXPECT(alr_step_dlpack(opt, &a), ALR_OK, "alr_step_dlpack shape [5]");
    }
    free(s0);
    EXPECT(alr_destroy(opt), ALR_OK, "alr_destroy");
}

/* ---------------------------------------------------------------------------------------- */
/* 5. allocation failure is an error, not an abort (issue 17, item 2)                        */
/* Each case runs in a child process whose address space is limited (RLIMIT_AS) to what it   */
/* uses plus a small headroom; a library that aborts there ("memory allocation failed",      */
/* SIGABRT) fails the check. Skipped under valgrind and ASan (ALR_TEST_NO_RLIMIT=1: both      */
/* reserve address space of their own), so run.sh runs the binary once without them too.     */

static size_t vm_size_bytes(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %zu kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb * 1024;
}

/* Lowers the soft limit to the current size plus `headroom` (the hard limit stays, so it can be raised back). */
static int limit_to_headroom(size_t headroom) {
    struct rlimit r;
    if (getrlimit(RLIMIT_AS, &r) != 0) return 0;
    r.rlim_cur = vm_size_bytes() + headroom;
    return setrlimit(RLIMIT_AS, &r) == 0;
}

static void unlimit(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_AS, &r) == 0) {
        r.rlim_cur = r.rlim_max;
        setrlimit(RLIMIT_AS, &r);
    }
}

/* alr_save_size and alr_save of a 128 MiB state with 48 MiB of headroom: the old code built the
 * whole serialised state in a growing vector (twice the state) and aborted. */
static int child_save_under_limit(void) {
    enum { NTEN = 16 };
    size_t lens[NTEN];
    for (int t = 0; t < NTEN; t++) lens[t] = (size_t)1 << 20;
    AlrOptimizer *opt = NULL;
    if (create("adam", lens, NULL, NTEN, &opt) != ALR_OK) return 10;
    size_t size = 0, again = 0, written = 0;
    if (alr_save_size(opt, &size) != ALR_OK) return 11;
    uint8_t *buf = malloc(size), *ref = malloc(size);
    if (!buf || !ref) return 12;
    if (!limit_to_headroom((size_t)48 << 20)) return 13;
    AlrStatus rc1 = alr_save_size(opt, &again);
    AlrStatus rc2 = alr_save(opt, buf, size, &written);
    unlimit();
    printf("  [%-20s] %-58s -> %s\n", alr_status_name(rc2), "alr_save_size + alr_save, 128 MiB state, 48 MiB headroom", alr_last_error());
    if (rc1 != ALR_OK || again != size) return 14;
    if (rc2 != ALR_OK || written != size) return 15;
    if (alr_save(opt, ref, size, &written) != ALR_OK || memcmp(buf, ref, size) != 0) return 16;
    free(buf);
    free(ref);
    alr_destroy(opt);
    return 0;
}

/* alr_create with 8 million tensors and 32 MiB of headroom: an error, not an abort. */
static int child_create_under_limit(void) {
    size_t n = (size_t)8 << 20;
    size_t *lens = malloc(n * sizeof *lens);
    if (!lens) return 10;
    for (size_t t = 0; t < n; t++) lens[t] = 1;
    AlrOptimizer *opt = (AlrOptimizer *)&opt;
    if (!limit_to_headroom((size_t)32 << 20)) return 13;
    AlrStatus rc = create("adam", lens, NULL, n, &opt);
    unlimit();
    printf("  [%-20s] %-58s -> %s\n", alr_status_name(rc), "alr_create 8M tensors, 32 MiB headroom", alr_last_error());
    if (rc == ALR_OK) {
        alr_destroy(opt);
        return 20; /* it fit after all: the test did not test what it means to */
    }
    if (rc != ALR_INVALID_ARGUMENT || opt != NULL || strstr(alr_last_error(), "allocate") == NULL) return 14;
    free(lens);
    return 0;
}

static void in_child(int (*body)(void), const char *what) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int code = body();
        fflush(stdout);
        _exit(code);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid, "fork/waitpid failed");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "%s: the child %s %d", what,
          WIFSIGNALED(status) ? "was killed by signal" : "exited with", WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}

static void test_allocation_failure(void) {
    printf("allocation failure under a limited address space\n");
    const char *skip = getenv("ALR_TEST_NO_RLIMIT");
    if (skip && skip[0] == '1') {
        printf("  note: skipped (ALR_TEST_NO_RLIMIT=1: valgrind or ASan reserve address space of their own)\n");
        return;
    }
    in_child(child_save_under_limit, "alr_save_size/alr_save of a 128 MiB state with 48 MiB headroom");
    in_child(child_create_under_limit, "alr_create with 8M tensors and 32 MiB headroom");
}

static void test_callback_failed(void) {
    printf("ALR_CALLBACK_FAILED\n");
    int produced = 0;
    /* GI: the loss callback runs after the move (documented: the move stands, eta is kept), so
     * only the status, the message and that the optimizer is not left stuck are checked. */
    {
        Fix fx;
        memset(&fx, 0, sizeof fx);
        init_params(&fx);
        fix_args(&fx);
        AlrStatus rc = create("gi", LENS, GROUPS, NT, &fx.opt);
        if (rc == ALR_INVALID_ARGUMENT) {
            printf("  note: 'gi' is not an algorithm of this build yet (%s): its callback path is skipped\n", alr_last_error());
        } else if (EXPECT(rc, ALR_OK, "alr_create gi")) {
            make_grads(&fx, 0);
            fix_args(&fx);
            double f = 0;
            const float *cp[NT] = {fx.p[0], fx.p[1], fx.p[2]};
            loss_quadratic(NULL, cp, NT, &f);
            fx.args.has_loss = 1;
            fx.args.loss = f;
            fx.args.loss_fn = loss_failing;
            cb_calls = 0;
            EXPECT(alr_step(fx.opt, &fx.args), ALR_CALLBACK_FAILED, "gi: alr_step with a failing loss callback");
            MSG_HAS("7");
            CHECK(cb_calls == 1, "gi: failing loss callback called %d times, want 1", cb_calls);
            produced = 1;
            make_grads(&fx, 1);
            fix_args(&fx);
            loss_quadratic(NULL, cp, NT, &f);
            fx.args.has_loss = 1;
            fx.args.loss = f;
            fx.args.loss_fn = loss_quadratic;
            EXPECT(alr_step(fx.opt, &fx.args), ALR_OK, "gi: the next step after a callback failure");

            /* ALR_WRONG_STATE the GI way: the base after the first step; a step, a save while the
             * last step waits for its loss report (two-phase protocol, no loss_fn) */
            Snap s;
            snap_take(&fx, &s);
            FAILS(&fx, &s, alr_set_option_str(fx.opt, "base", "adam"), ALR_WRONG_STATE, "gi: set 'base' after the first step");
            snap_free(&s);
            make_grads(&fx, 2);
            fix_args(&fx);
            loss_quadratic(NULL, cp, NT, &f);
            fx.args.has_loss = 1;
            fx.args.loss = f;
            if (EXPECT(alr_step(fx.opt, &fx.args), ALR_OK, "gi: step without loss_fn (waits for alr_report_loss)")) {
                float moved[NT][MAXLEN];
                memcpy(moved, fx.p, sizeof moved);
                size_t n = 0;
                EXPECT(alr_step(fx.opt, &fx.args), ALR_WRONG_STATE, "gi: alr_step while a loss report is due");
                CHECK(memcmp(moved, fx.p, sizeof moved) == 0, "gi: a refused step moved the parameters");
                EXPECT(alr_save_size(fx.opt, &n), ALR_WRONG_STATE, "gi: alr_save_size while a loss report is due");
                loss_quadratic(NULL, cp, NT, &f);
                EXPECT(alr_report_loss(fx.opt, f), ALR_OK, "gi: alr_report_loss");
                EXPECT(alr_report_loss(fx.opt, f), ALR_WRONG_STATE, "gi: alr_report_loss twice");
                EXPECT(alr_save_size(fx.opt, &n), ALR_OK, "gi: alr_save_size after the report");
            }
            fix_close(&fx);
        }
    }
    /* vSGD-l without curvature estimates it through the gradient callback, before any change. */
    {
        Fix fx;
        memset(&fx, 0, sizeof fx);
        init_params(&fx);
        fix_args(&fx);
        AlrStatus rc = create("vsgd-l", LENS, GROUPS, NT, &fx.opt);
        if (rc == ALR_INVALID_ARGUMENT) {
            printf("  note: 'vsgd-l' is not an algorithm of this build yet (%s): its callback path is skipped\n", alr_last_error());
        } else if (EXPECT(rc, ALR_OK, "alr_create vsgd-l")) {
            Snap s;
            snap_take(&fx, &s);
            make_grads(&fx, 0);
            fix_args(&fx);
            fx.args.grad_fn = grad_failing;
            cb_calls = 0;
            FAILS(&fx, &s, alr_step(fx.opt, &fx.args), ALR_CALLBACK_FAILED, "vsgd-l: alr_step with a failing gradient callback");
            MSG_HAS("3");
            CHECK(cb_calls >= 1, "vsgd-l: the gradient callback was not called");
            produced = 1;
            snap_free(&s);
            fix_close(&fx);
        }
    }
    if (!produced)
        printf("  note: ALR_CALLBACK_FAILED skipped: no algorithm of this build takes callbacks yet\n");
}

/* alr_set_mode: schedule-free swaps the caller's parameters to x and back; the same mode twice and
 * a step in eval mode are ALR_WRONG_STATE with nothing changed; a bad mode or struct_size is
 * ALR_INVALID_ARGUMENT; for another algorithm both modes are no-ops. */
static void test_modes(void) {
    Fix fx;
    if (!fix_open(&fx, "sf-sgd")) return;
    AlrModeArgs m = fix_mode_args(&fx, ALR_MODE_TRAIN);
    EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, "sf-sgd: ALR_MODE_TRAIN before the first step");
    for (int k = 0; k < 4; k++) EXPECT(fix_step(&fx, k), ALR_OK, "sf-sgd: alr_step");
    float y[NT][MAXLEN];
    memcpy(y, fx.p, sizeof y);
    m.mode = ALR_MODE_EVAL;
    EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, "sf-sgd: ALR_MODE_EVAL");
    CHECK(memcmp(y, fx.p, sizeof y) != 0, "sf-sgd: eval left the parameters at y");
    Snap s;
    snap_take(&fx, &s);
    FAILS(&fx, &s, alr_set_mode(fx.opt, &m), ALR_WRONG_STATE, "sf-sgd: ALR_MODE_EVAL twice");
    FAILS(&fx, &s, fix_step(&fx, 4), ALR_WRONG_STATE, "sf-sgd: alr_step in eval mode");
    m.mode = 7;
    FAILS(&fx, &s, alr_set_mode(fx.opt, &m), ALR_INVALID_ARGUMENT, "alr_set_mode with mode 7");
    m.mode = ALR_MODE_TRAIN;
    m.struct_size = 8;
    FAILS(&fx, &s, alr_set_mode(fx.opt, &m), ALR_INVALID_ARGUMENT, "alr_set_mode with struct_size 8");
    m.struct_size = sizeof m;
    m.n_tensors = NT - 1;
    FAILS(&fx, &s, alr_set_mode(fx.opt, &m), ALR_SHAPE_MISMATCH, "alr_set_mode with n_tensors - 1");
    m.n_tensors = NT;
    FAILS(&fx, &s, alr_set_mode(fx.opt, NULL), ALR_NULL_POINTER, "alr_set_mode with args NULL");
    snap_free(&s);
    EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, "sf-sgd: back to ALR_MODE_TRAIN");
    double err = 0.0;
    for (size_t t = 0; t < NT; t++)
        for (size_t i = 0; i < LENS[t]; i++) err = fmax(err, fabs((double)fx.p[t][i] - (double)y[t][i]));
    CHECK(err < 1e-6, "sf-sgd: x -> y round trip off by %g", err);
    EXPECT(fix_step(&fx, 4), ALR_OK, "sf-sgd: alr_step after train");
    fix_close(&fx);
    if (!fix_open(&fx, "adam")) return;
    memcpy(y, fx.p, sizeof y);
    m.params = fx.pp;
    for (int k = 0; k < 2; k++) {
        m.mode = ALR_MODE_EVAL;
        EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, "adam: ALR_MODE_EVAL (a no-op)");
        m.mode = ALR_MODE_TRAIN;
        EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, "adam: ALR_MODE_TRAIN (a no-op)");
    }
    CHECK(memcmp(y, fx.p, sizeof y) == 0, "adam: a mode change moved the parameters");
    fix_close(&fx);
}

/* A telemetry entry of group 0 by name (NAN when there is none). */
static double telemetry_of(AlrOptimizer *opt, const char *wanted) {
    size_t count = 0;
    if (alr_telemetry_count(opt, 0, &count) != ALR_OK) return NAN;
    for (size_t e = 0; e < count; e++) {
        const char *name = NULL;
        double value = 0.0;
        if (alr_telemetry_entry(opt, 0, e, &name, &value) == ALR_OK && strcmp(name, wanted) == 0) return value;
    }
    return NAN;
}

/* The loss of the fixture's parameters (loss_quadratic's, without counting a callback call). */
static double fixture_loss(const Fix *fx) {
    const float *cp[NT] = {fx->p[0], fx->p[1], fx->p[2]};
    double f = 0.0;
    loss_quadratic(NULL, cp, NT, &f);
    cb_calls--;
    return f;
}

/* Schedule-free over gi (docs/algorithms.md §3.3): GI's base is the string option base_base; its
 * loss is taken at y and called back (or reported) at y'; GI's two-phase protocol with its bad
 * input; the mode switch waits for the report. */
static void test_schedule_free_over_gi(void) {
    printf("schedule-free over gi\n");
    Fix fx;
    if (!fix_open(&fx, "schedule-free")) return;
    Snap s;
    snap_take(&fx, &s);
    FAILS(&fx, &s, alr_set_option_str(fx.opt, "base_base", "adam"), ALR_INVALID_ARGUMENT, "schedule-free over adamw: base_base");
    MSG_HAS("set base = 'gi' first");
    snap_free(&s);
    EXPECT(alr_set_option_str(fx.opt, "base", "gi"), ALR_OK, "schedule-free: base gi");
    EXPECT(alr_set_option_str(fx.opt, "base_base", "momentum"), ALR_OK, "schedule-free over gi: base_base momentum");
    EXPECT(alr_set_option(fx.opt, "base_lr", 0.05), ALR_OK, "schedule-free over gi: base_lr (GI's initial eta)");
    EXPECT(alr_set_option(fx.opt, "base_momentum", 0.3), ALR_OK, "schedule-free over gi: base_momentum (GI's base's)");
    CHECK(get_opt(fx.opt, 0, "momentum") == 0.9, "schedule-free over gi: momentum (the interpolation) is %g", get_opt(fx.opt, 0, "momentum"));
    snap_take(&fx, &s);
    FAILS(&fx, &s, alr_set_option_str(fx.opt, "base_base", "gi"), ALR_INVALID_ARGUMENT, "schedule-free over gi: base_base gi");
    FAILS(&fx, &s, alr_report_loss(fx.opt, 1.0), ALR_WRONG_STATE, "schedule-free over gi: alr_report_loss before any step");
    /* the loss is required on an adapting step */
    make_grads(&fx, 0);
    fix_args(&fx);
    FAILS(&fx, &s, alr_step(fx.opt, &fx.args), ALR_INVALID_ARGUMENT, "schedule-free over gi: a step without its loss");
    MSG_HAS("pass loss");
    snap_free(&s);
    /* the loss callback: called once, at y' */
    fx.args.has_loss = 1;
    fx.args.loss = fixture_loss(&fx);
    fx.args.loss_fn = loss_quadratic;
    cb_calls = 0;
    EXPECT(alr_step(fx.opt, &fx.args), ALR_OK, "schedule-free over gi: step with a loss callback");
    CHECK(cb_calls == 1, "schedule-free over gi: loss callback called %d times, want 1", cb_calls);
    double phi_y = telemetry_of(fx.opt, "phi_y"), rho = telemetry_of(fx.opt, "rho");
    CHECK(phi_y > 0.0, "schedule-free over gi: telemetry phi_y is %g after an adapting step", phi_y);
    double expected = (fx.args.loss - fixture_loss(&fx)) / (phi_y / 2.0);
    CHECK(rho == expected, "schedule-free over gi: rho %.17g, (f - f+)/(phi_y/2) at the parameters %.17g", rho, expected);
    /* a failing callback: the move stands, the next step runs */
    make_grads(&fx, 1);
    fix_args(&fx);
    fx.args.has_loss = 1;
    fx.args.loss = fixture_loss(&fx);
    fx.args.loss_fn = loss_failing;
    float before[NT][MAXLEN];
    memcpy(before, fx.p, sizeof before);
    EXPECT(alr_step(fx.opt, &fx.args), ALR_CALLBACK_FAILED, "schedule-free over gi: a failing loss callback");
    MSG_HAS("7");
    CHECK(memcmp(before, fx.p, sizeof before) != 0, "schedule-free over gi: the move of a step whose callback failed did not stand");
    /* the two-phase protocol */
    make_grads(&fx, 2);
    fix_args(&fx);
    fx.args.has_loss = 1;
    fx.args.loss = fixture_loss(&fx);
    if (EXPECT(alr_step(fx.opt, &fx.args), ALR_OK, "schedule-free over gi: step without loss_fn (waits for alr_report_loss)")) {
        float moved[NT][MAXLEN];
        memcpy(moved, fx.p, sizeof moved);
        size_t n = 0;
        EXPECT(alr_step(fx.opt, &fx.args), ALR_WRONG_STATE, "schedule-free over gi: alr_step while a loss report is due");
        EXPECT(alr_save_size(fx.opt, &n), ALR_WRONG_STATE, "schedule-free over gi: alr_save_size while a loss report is due");
        AlrModeArgs m = fix_mode_args(&fx, ALR_MODE_EVAL);
        EXPECT(alr_set_mode(fx.opt, &m), ALR_WRONG_STATE, "schedule-free over gi: ALR_MODE_EVAL while a loss report is due");
        MSG_HAS("alr_report_loss");
        CHECK(memcmp(moved, fx.p, sizeof moved) == 0, "schedule-free over gi: a refused call moved the parameters");
        double eta = telemetry_of(fx.opt, "eta");
        EXPECT(alr_report_loss(fx.opt, fixture_loss(&fx)), ALR_OK, "schedule-free over gi: alr_report_loss");
        CHECK(telemetry_of(fx.opt, "rho") != 0.0, "schedule-free over gi: the report did not adapt (rho 0, eta %g)", eta);
        EXPECT(alr_report_loss(fx.opt, 1.0), ALR_WRONG_STATE, "schedule-free over gi: alr_report_loss twice");
        EXPECT(alr_save_size(fx.opt, &n), ALR_OK, "schedule-free over gi: alr_save_size after the report");
        EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, "schedule-free over gi: ALR_MODE_EVAL after the report");
        CHECK(memcmp(moved, fx.p, sizeof moved) != 0, "schedule-free over gi: eval left the parameters at y");
        m.mode = ALR_MODE_TRAIN;
        EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, "schedule-free over gi: back to ALR_MODE_TRAIN");
    }
    snap_take(&fx, &s);
    FAILS(&fx, &s, alr_set_option_str(fx.opt, "base_base", "adam"), ALR_WRONG_STATE, "schedule-free over gi: base_base after the first step");
    snap_free(&s);
    fix_close(&fx);
}

/* ---------------------------------------------------------------------------------------- */
/* 6. the tuning-free peers (issue 19, item 9): the guarantees of every other algorithm      */

typedef struct {
    const char *name;
    double value;
} OptionValue;

typedef struct {
    const char *algorithm;
    /* values outside each option's accepted range (docs/algorithms.md §6.1; schedule-free's
       table in src/adapt/schedule_free.rs), terminated by a NULL name */
    OptionValue out_of_range[8];
    /* an option that shapes the state: refused once training started (NULL: none) */
    const char *structural;
    /* schedule-free: has a `base` string option and two parameter views */
    int schedule_free;
} PeerCase;

static const PeerCase PEERS[] = {
    {"prodigy", {{"lr", -1.0}, {"beta1", 1.0}, {"beta3", 1.5}, {"d0", 0.0}, {"d_coef", -1.0}, {"growth_rate", 0.0}, {"safeguard_warmup", 0.5}}, "d0", 0},
    {"dadapt-adam", {{"lr", NAN}, {"beta2", 1.0}, {"eps", 0.0}, {"d0", -1.0}, {"growth_rate", -2.0}, {"decouple", 2.0}}, "d0", 0},
    {"dog", {{"lr", 0.0}, {"reps_rel", 0.0}, {"eps", 0.0}, {"init_eta", -1.0}, {"weight_decay", -0.1}}, NULL, 0},
    {"ldog", {{"lr", -1.0}, {"reps_rel", NAN}, {"eps", -1e-8}, {"init_eta", 0.0}, {"weight_decay", INFINITY}}, NULL, 0},
    {"schedule-free", {{"lr", INFINITY}, {"beta1", 0.0}, {"warmup_steps", 1.5}, {"r", -1.0}, {"weight_lr_power", -1.0}, {"beta2", 1.0}}, NULL, 1},
    {"sf-adamw", {{"beta1", 1.0}, {"warmup_steps", -1.0}, {"eps", 0.0}, {"weight_decay", -1.0}}, NULL, 1},
    {"sf-sgd", {{"momentum", 0.0}, {"momentum", 1.0}, {"lr", -0.5}, {"base_weight_decay", -1.0}}, NULL, 1},
};

/* Every kind of bad input to one peer: the right status, a message, and the parameters and saved
 * state bit-identical afterwards; then the optimizer still follows an untouched twin's
 * trajectory; then its two parameter views (a no-op for prodigy, dadapt-adam, dog and ldog). */
static void peer_bad_input(const PeerCase *pc) {
    const char *alg = pc->algorithm;
    printf("bad input to '%s' changes nothing\n", alg);
    Fix fx;
    Snap s;
    char what[160];
#define WHAT(...) (snprintf(what, sizeof what, __VA_ARGS__), what)
    /* each value out of range names its option; tried before the first step, while every
       option, a structural one too, may still be set */
    if (!fix_open(&fx, alg)) return;
    snap_take(&fx, &s);
    for (const OptionValue *o = pc->out_of_range; o->name != NULL; o++) {
        FAILS(&fx, &s, alr_set_option(fx.opt, o->name, o->value), ALR_INVALID_ARGUMENT, WHAT("%s: alr_set_option %s = %g", alg, o->name, o->value));
        MSG_HAS(o->name);
    }
    snap_free(&s);
    for (int k = 0; k < 3; k++) EXPECT(fix_step(&fx, k), ALR_OK, "peer step");
    make_grads(&fx, 3);
    fix_args(&fx);
    snap_take(&fx, &s);
    AlrStepArgs a;
    double v = 0;

    /* null pointers */
    FAILS(&fx, &s, alr_step(fx.opt, NULL), ALR_NULL_POINTER, WHAT("%s: alr_step(args = NULL)", alg));
    a = fx.args;
    a.params = NULL;
    FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_NULL_POINTER, WHAT("%s: alr_step(params = NULL)", alg));
    a = fx.args;
    a.grads = NULL;
    FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_NULL_POINTER, WHAT("%s: alr_step(grads = NULL)", alg));
    {
        const float *grads_with_hole[NT] = {fx.g[0], fx.g[1], NULL};
        a = fx.args;
        a.grads = grads_with_hole;
        FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_NULL_POINTER, WHAT("%s: alr_step(grads[2] = NULL)", alg));
        MSG_HAS("grads[2]");
    }
    FAILS(&fx, &s, alr_set_option(fx.opt, NULL, 0.1), ALR_NULL_POINTER, WHAT("%s: alr_set_option(name = NULL)", alg));
    FAILS(&fx, &s, alr_get_option(fx.opt, 0, "lr", NULL), ALR_NULL_POINTER, WHAT("%s: alr_get_option(value = NULL)", alg));
    FAILS(&fx, &s, alr_get_lr(fx.opt, 0, NULL), ALR_NULL_POINTER, WHAT("%s: alr_get_lr(out = NULL)", alg));
    FAILS(&fx, &s, alr_set_mode(fx.opt, NULL), ALR_NULL_POINTER, WHAT("%s: alr_set_mode(args = NULL)", alg));
    FAILS(&fx, &s, alr_load(fx.opt, NULL, s.len), ALR_NULL_POINTER, WHAT("%s: alr_load(buf = NULL)", alg));

    /* wrong lengths */
    a = fx.args;
    a.n_tensors = NT - 1;
    FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_SHAPE_MISMATCH, WHAT("%s: alr_step n_tensors = %d of %d", alg, NT - 1, NT));
    a.n_tensors = NT + 1;
    FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_SHAPE_MISMATCH, WHAT("%s: alr_step n_tensors = %d of %d", alg, NT + 1, NT));
    a = fx.args;
    a.struct_size = sizeof a - 8;
    FAILS(&fx, &s, alr_step(fx.opt, &a), ALR_INVALID_ARGUMENT, WHAT("%s: alr_step struct_size too small", alg));

    /* NaN and Inf in the last tensor's gradient: the first tensors would be moved already if the
       check did not come before every update */
    {
        const float bad[3] = {NAN, INFINITY, -INFINITY};
        for (int k = 0; k < 3; k++) {
            float keep = fx.g[2][8];
            fx.g[2][8] = bad[k];
            FAILS(&fx, &s, alr_step(fx.opt, &fx.args), ALR_NON_FINITE, WHAT("%s: alr_step %g in grads[2][8]", alg, (double)bad[k]));
            MSG_HAS("tensor 2");
            fx.g[2][8] = keep;
        }
    }

    /* options: an unknown name lists the accepted ones */
    FAILS(&fx, &s, alr_set_option(fx.opt, "learning_rate", 0.1), ALR_INVALID_ARGUMENT, WHAT("%s: alr_set_option unknown name", alg));
    MSG_HAS("accepted");
    MSG_HAS(pc->out_of_range[0].name);
    FAILS(&fx, &s, alr_set_group_option(fx.opt, NG, "weight_decay", 0.1), ALR_INVALID_ARGUMENT, WHAT("%s: alr_set_group_option group %d of %d", alg, NG, NG));
    FAILS(&fx, &s, alr_get_option(fx.opt, 0, "no_such_option", &v), ALR_INVALID_ARGUMENT, WHAT("%s: alr_get_option unknown name", alg));

    /* calls out of order */
    if (pc->structural) {
        FAILS(&fx, &s, alr_set_option(fx.opt, pc->structural, 2e-6), ALR_WRONG_STATE, WHAT("%s: alr_set_option %s after the first step", alg, pc->structural));
        MSG_HAS(pc->structural);
    }
    if (strcmp(alg, "prodigy") == 0) {
        /* beta1 shapes the state only by being 0 or not: it may change above 0, not to 0 */
        FAILS(&fx, &s, alr_set_option(fx.opt, "beta1", 0.0), ALR_WRONG_STATE, WHAT("prodigy: alr_set_option beta1 = 0 after the first step"));
        MSG_HAS("whether it is 0");
        EXPECT(alr_set_option(fx.opt, "beta1", 0.8), ALR_OK, "prodigy: alr_set_option beta1 = 0.8 after the first step");
        EXPECT(alr_set_option(fx.opt, "beta1", 0.9), ALR_OK, "prodigy: alr_set_option beta1 back to 0.9");
    }
    FAILS(&fx, &s, alr_set_option_str(fx.opt, "base", "sgd"), pc->schedule_free && strcmp(alg, "schedule-free") == 0 ? ALR_WRONG_STATE : ALR_INVALID_ARGUMENT,
          WHAT("%s: alr_set_option_str base after the first step", alg));
    FAILS(&fx, &s, alr_report_loss(fx.opt, 1.0), ALR_WRONG_STATE, WHAT("%s: alr_report_loss", alg));

    /* corrupt checkpoints */
    {
        uint8_t *buf = malloc(s.len + 1);
        memcpy(buf, s.state, s.len);
        FAILS(&fx, &s, alr_load(fx.opt, buf, s.len - 1), ALR_BAD_CHECKPOINT, WHAT("%s: alr_load truncated by 1 byte", alg));
        buf[s.len] = 0;
        FAILS(&fx, &s, alr_load(fx.opt, buf, s.len + 1), ALR_BAD_CHECKPOINT, WHAT("%s: alr_load with a trailing byte", alg));
        size_t positions[] = {0, 8, 20, s.len / 3, s.len / 2, s.len - 20, s.len - 9, s.len - 1};
        for (size_t k = 0; k < sizeof positions / sizeof positions[0]; k++) {
            buf[positions[k]] ^= 0x10;
            FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, WHAT("%s: alr_load byte %zu of %zu flipped", alg, positions[k], s.len));
            buf[positions[k]] ^= 0x10;
        }
        /* behind the checksum: another format version, another algorithm name */
        buf[8] ^= 0x02;
        reseal(buf, s.len);
        FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, WHAT("%s: alr_load other format version (resealed)", alg));
        memcpy(buf, s.state, s.len);
        size_t name_len = strlen(alg), at = 0;
        for (size_t i = 12; i + name_len <= s.len && at == 0; i++)
            if (memcmp(buf + i, alg, name_len) == 0) at = i;
        CHECK(at > 0, "%s: the algorithm name was not found in its checkpoint", alg);
        buf[at + name_len - 1] ^= 0x01;
        reseal(buf, s.len);
        FAILS(&fx, &s, alr_load(fx.opt, buf, s.len), ALR_BAD_CHECKPOINT, WHAT("%s: alr_load another algorithm name (resealed)", alg));
        free(buf);
        Fix other;
        if (fix_open(&other, "adam")) {
            EXPECT(fix_step(&other, 0), ALR_OK, "adam step");
            size_t len = 0;
            uint8_t *adam = save_state(other.opt, &len);
            FAILS(&fx, &s, alr_load(fx.opt, adam, len), ALR_BAD_CHECKPOINT, WHAT("%s: alr_load an adam checkpoint", alg));
            free(adam);
            fix_close(&other);
        }
    }

    /* after all that, the same trajectory as an optimizer that saw none of it */
    EXPECT(alr_step(fx.opt, &fx.args), ALR_OK, WHAT("%s: alr_step after the failures", alg));
    {
        Fix twin;
        if (fix_open(&twin, alg)) {
            for (int k = 0; k < 4; k++) EXPECT(fix_step(&twin, k), ALR_OK, "twin step");
            CHECK(memcmp(twin.p, fx.p, sizeof twin.p) == 0, "%s: failed calls changed the trajectory", alg);
            fix_close(&twin);
        }
    }
    snap_free(&s);

    /* the two parameter views: the same mode twice and a step in eval mode are refused for
       schedule-free; for the others both modes are no-ops and a step is allowed */
    AlrModeArgs m = fix_mode_args(&fx, ALR_MODE_EVAL);
    float y[NT][MAXLEN];
    memcpy(y, fx.p, sizeof y);
    EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, WHAT("%s: ALR_MODE_EVAL", alg));
    CHECK((memcmp(y, fx.p, sizeof y) != 0) == pc->schedule_free, "%s: ALR_MODE_EVAL %s the parameters", alg, pc->schedule_free ? "did not change" : "changed");
    snap_take(&fx, &s);
    if (pc->schedule_free) {
        FAILS(&fx, &s, alr_set_mode(fx.opt, &m), ALR_WRONG_STATE, WHAT("%s: ALR_MODE_EVAL twice", alg));
        FAILS(&fx, &s, fix_step(&fx, 5), ALR_WRONG_STATE, WHAT("%s: alr_step in eval mode", alg));
    } else {
        EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, WHAT("%s: ALR_MODE_EVAL twice (a no-op)", alg));
        UNCHANGED(&fx, &s, WHAT("%s: ALR_MODE_EVAL twice", alg));
    }
    m.mode = 2;
    FAILS(&fx, &s, alr_set_mode(fx.opt, &m), ALR_INVALID_ARGUMENT, WHAT("%s: alr_set_mode with mode 2", alg));
    m.mode = ALR_MODE_TRAIN;
    EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, WHAT("%s: ALR_MODE_TRAIN", alg));
    snap_free(&s);
    snap_take(&fx, &s);
    if (pc->schedule_free)
        FAILS(&fx, &s, alr_set_mode(fx.opt, &m), ALR_WRONG_STATE, WHAT("%s: ALR_MODE_TRAIN twice", alg));
    else
        EXPECT(alr_set_mode(fx.opt, &m), ALR_OK, WHAT("%s: ALR_MODE_TRAIN twice (a no-op)", alg));
    EXPECT(fix_step(&fx, 5), ALR_OK, WHAT("%s: alr_step in train mode", alg));
#undef WHAT
    snap_free(&s);
    fix_close(&fx);
}

static void test_peers_bad_input(void) {
    for (size_t k = 0; k < sizeof PEERS / sizeof PEERS[0]; k++) peer_bad_input(&PEERS[k]);
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* keep stdout and the library's stderr lines in order */
    printf("autolr %s (ABI %u)\n", alr_version(), alr_abi_version());
    test_against_reference();
    test_resume("momentum", set_momentum_options, check_options_momentum);
    test_resume("adam", set_adam_options, check_options_adam);
    test_null_and_create_errors();
    test_stale_handle();
    test_errors_on_live_optimizer();
    test_resealed_checkpoints();
    test_callback_failed();
    test_impossible_sizes();
    test_allocation_failure();
    test_modes();
    test_schedule_free_over_gi();
    test_peers_bad_input();
    /* ALR_CUDA_ERROR: not producible on a CPU build (see the comment at the top). */
    printf("%d passed, %d failed\n", n_pass, n_fail);
    return n_fail == 0 ? 0 : 1;
}
