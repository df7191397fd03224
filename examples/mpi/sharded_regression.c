/* Sharded training with MPI (README "More than one process", docs/algorithms.md §7).
 *
 * A linear model y = W x + b (W: 3 x 20, b: 3; two groups) fitted by least squares on a
 * stream of batches. Every rank holds the whole model (replicated, for the forward pass) but
 * steps only its slice of each tensor: rank r of K owns elements [n r / K, n (r + 1) / K) of a
 * tensor of n elements (uneven when K does not divide n), and its optimizer holds the state of
 * those elements only. The library's per-step sums over a group's elements are completed over
 * the ranks by the reduce callback, MPI_Allreduce (MPI_SUM or MPI_MAX on MPI_DOUBLE); after the
 * step, MPI_Allgatherv gives every rank the slices the others stepped.
 *
 * Every rank draws the same batch, so the gradient of an element is computed by the same
 * float32 loop whatever K is, and the run over K ranks differs from the unsharded one only in
 * the order the library's sums are added in (per rank, then over ranks).
 *
 * Usage: mpirun -np K sharded_regression ALGORITHM [--whole]
 *   ALGORITHM: auto-sgd, auto-adam, auto-adagrad, tlr, vsgd-g, vsgd-b, gi-adam, gi-auto-adam,
 *              prodigy, dadapt-adam, dog, ldog, or one without reductions (adam);
 *   --whole (K = 1 only): the unsharded optimizer (no callback), the reference.
 * Rank 0 prints the callback's calls (the fewest and the most over the ranks), every group's
 * learning rate after the last step, and the parameters; exit status 0, or 1 with a message.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autolr.h"

enum { IN = 20, OUT = 3, BATCH = 16, STEPS = 50, NT = 2 };
static const size_t LENS[NT] = {OUT * IN, OUT};

typedef struct {
    MPI_Comm comm;
    int rank, size;
    long calls;
    size_t start[NT][64], count[NT][64]; /* every rank's slice of every tensor */
    float *full[NT];                     /* the whole model, W then b */
    float *slice[NT];                    /* this rank's slices: what the optimizer steps */
    float x[BATCH][IN], y[BATCH][OUT];   /* the step's batch */
} Model;

static void die(const char *what) {
    fprintf(stderr, "sharded_regression: %s: %s\n", what, alr_last_error());
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* The caller's communicator as the library's reduce callback. */
static int32_t mpi_reduce(void *user_data, double *values, size_t n, int32_t op, void *stream) {
    (void)stream; /* a CPU optimizer passes NULL */
    Model *m = user_data;
    m->calls++;
    int rc = MPI_Allreduce(MPI_IN_PLACE, values, (int)n, MPI_DOUBLE, op == ALR_REDUCE_MAX ? MPI_MAX : MPI_SUM, m->comm);
    return rc == MPI_SUCCESS ? 0 : 1;
}

/* Every rank's slices (as stepped) into every rank's whole model. */
static void gather(Model *m, const float *const *slices) {
    for (int t = 0; t < NT; t++) {
        int counts[64], displs[64];
        for (int r = 0; r < m->size; r++) {
            counts[r] = (int)m->count[t][r];
            displs[r] = (int)m->start[t][r];
        }
        MPI_Allgatherv(slices[t], counts[m->rank], MPI_FLOAT, m->full[t], counts, displs, MPI_FLOAT, m->comm);
    }
}

/* A deterministic stream of uniform floats in [-1, 1) (xorshift64). */
static float uniform(unsigned long long *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((double)(*s >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void draw_batch(Model *m, int step) {
    unsigned long long s = 0x9E3779B97F4A7C15ull ^ (unsigned long long)(step + 1);
    for (int i = 0; i < BATCH; i++) {
        for (int j = 0; j < IN; j++) m->x[i][j] = uniform(&s);
        for (int k = 0; k < OUT; k++) {
            float target = 0.5f * (float)(k + 1);
            for (int j = 0; j < IN; j++) target += (float)((j % 5) - 2) * 0.3f * m->x[i][j];
            m->y[i][k] = target + 0.1f * uniform(&s);
        }
    }
}

/* The residuals of the batch at the whole model, in one fixed float32 order. */
static void residuals(const Model *m, float r[BATCH][OUT]) {
    for (int i = 0; i < BATCH; i++)
        for (int k = 0; k < OUT; k++) {
            float v = m->full[1][k];
            for (int j = 0; j < IN; j++) v += m->full[0][k * IN + j] * m->x[i][j];
            r[i][k] = v - m->y[i][k];
        }
}

/* The batch's loss, (1 / 2N) Σ_i |W x_i + b − y_i|², at the whole model. */
static double loss_of(const Model *m) {
    float r[BATCH][OUT];
    residuals(m, r);
    double total = 0.0;
    for (int i = 0; i < BATCH; i++)
        for (int k = 0; k < OUT; k++) total += 0.5 * (double)r[i][k] * (double)r[i][k];
    return total / BATCH;
}

/* GI's loss after the move: the slices are the new ones; gather them first (every rank calls
 * this in the same step, so the collective matches). */
static int32_t loss_after(void *user_data, const float *const *params, size_t n_tensors, double *out) {
    (void)n_tensors;
    Model *m = user_data;
    gather(m, params);
    *out = loss_of(m);
    return 0;
}

/* Gradient, Σ_i g_i² and the exact diagonal curvature of this rank's elements. */
static void inputs(const Model *m, float *grad[NT], float *sum_sq[NT], float *curv[NT]) {
    float r[BATCH][OUT];
    residuals(m, r);
    for (int t = 0; t < NT; t++)
        for (size_t e = 0; e < m->count[t][m->rank]; e++) {
            size_t at = m->start[t][m->rank] + e;
            int k = t == 0 ? (int)(at / IN) : (int)at, j = t == 0 ? (int)(at % IN) : -1;
            float g = 0.0f, s = 0.0f, h = 0.0f;
            for (int i = 0; i < BATCH; i++) {
                float xi = j < 0 ? 1.0f : m->x[i][j];
                float gi = r[i][k] * xi; /* sample i's own gradient */
                g += gi;
                s += gi * gi;
                h += xi * xi;
            }
            grad[t][e] = g / BATCH;
            sum_sq[t][e] = s;
            curv[t][e] = h / BATCH;
        }
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    Model m = {.comm = MPI_COMM_WORLD};
    MPI_Comm_rank(m.comm, &m.rank);
    MPI_Comm_size(m.comm, &m.size);
    int whole = argc == 3 && strcmp(argv[2], "--whole") == 0;
    if ((argc != 2 && !whole) || m.size > 64 || (whole && m.size != 1)) {
        if (m.rank == 0) fprintf(stderr, "usage: mpirun -np K (K <= 64) sharded_regression ALGORITHM [--whole (K = 1)]\n");
        MPI_Finalize();
        return 2;
    }
    const char *name = argv[1];
    const char *algorithm = strncmp(name, "gi-", 3) == 0 ? "gi" : name;
    int auto_inputs = strncmp(name, "auto-", 5) == 0 || strcmp(name, "gi-auto-adam") == 0;
    int vsgd = strncmp(name, "vsgd-", 5) == 0, gi = strcmp(algorithm, "gi") == 0;

    float *grad[NT], *sum_sq[NT], *curv[NT];
    for (int t = 0; t < NT; t++) {
        if (LENS[t] < (size_t)m.size) {
            if (m.rank == 0) fprintf(stderr, "sharded_regression: tensor %d has %zu elements, fewer than %d ranks\n", t, LENS[t], m.size);
            MPI_Abort(m.comm, 1);
        }
        for (int r = 0; r < m.size; r++) {
            m.start[t][r] = LENS[t] * (size_t)r / (size_t)m.size;
            m.count[t][r] = LENS[t] * (size_t)(r + 1) / (size_t)m.size - m.start[t][r];
        }
        size_t mine = m.count[t][m.rank];
        m.full[t] = calloc(LENS[t], sizeof(float));
        m.slice[t] = calloc(mine, sizeof(float));
        grad[t] = calloc(mine, sizeof(float));
        sum_sq[t] = calloc(mine, sizeof(float));
        curv[t] = calloc(mine, sizeof(float));
        if (!m.full[t] || !m.slice[t] || !grad[t] || !sum_sq[t] || !curv[t]) die("out of memory");
    }
    unsigned long long seed = 42;
    for (int t = 0; t < NT; t++)
        for (size_t e = 0; e < LENS[t]; e++) m.full[t][e] = 0.1f * uniform(&seed);
    for (int t = 0; t < NT; t++) memcpy(m.slice[t], m.full[t] + m.start[t][m.rank], m.count[t][m.rank] * sizeof(float));

    size_t lens[NT] = {m.count[0][m.rank], m.count[1][m.rank]};
    uint32_t groups[NT] = {0, 1};
    AlrCreateArgs args = {.struct_size = sizeof args, .algorithm = algorithm, .n_tensors = NT, .lens = lens, .groups = groups,
                          .device = ALR_DEVICE_CPU, .sharded = !whole, .reduce = whole ? NULL : mpi_reduce,
                          .reduce_user_data = whole ? NULL : &m};
    AlrOptimizer *opt = NULL;
    if (alr_create(&args, &opt) != ALR_OK) die("alr_create");
    if (gi && alr_set_option_str(opt, "base", name + 3) != ALR_OK) die("base");
    if (strcmp(name, "tlr") == 0 && (alr_set_option(opt, "lr", 0.05) || alr_set_option(opt, "momentum", 0.5))) die("tlr options");
    if (strcmp(name, "gi-adam") == 0 && alr_set_option(opt, "lr", 0.01)) die("gi options");
    if (strcmp(name, "adam") == 0 && alr_set_option(opt, "lr", 0.01)) die("adam options");
    /* vSGD's slow start counts the model's parameters, which no shard sees: give it. */
    if (vsgd && (alr_set_option(opt, "n0", 3) || alr_set_option(opt, "slow_start_c", 20.0))) die("vsgd options");

    for (int step = 0; step < STEPS; step++) {
        draw_batch(&m, step);
        inputs(&m, grad, sum_sq, curv);
        AlrStepArgs s = {.struct_size = sizeof s, .n_tensors = NT, .params = m.slice, .grads = (const float *const *)grad,
                         .user_data = &m};
        if (auto_inputs) {
            s.sum_sq = (const float *const *)sum_sq;
            s.per_sample_scale = ALR_SCALE_SAMPLE;
            s.batch_size = BATCH;
        }
        if (vsgd) s.curvature = (const float *const *)curv;
        if (gi) {
            s.has_loss = 1;
            s.loss = loss_of(&m);
            s.loss_fn = loss_after;
        }
        if (alr_step(opt, &s) != ALR_OK) die("alr_step");
        gather(&m, (const float *const *)m.slice);
    }

    long fewest, most;
    MPI_Reduce(&m.calls, &fewest, 1, MPI_LONG, MPI_MIN, 0, m.comm);
    MPI_Reduce(&m.calls, &most, 1, MPI_LONG, MPI_MAX, 0, m.comm);
    if (m.rank == 0) {
        printf("calls %ld %ld\n", fewest, most);
        for (size_t g = 0; g < 2; g++) {
            double lr;
            if (alr_get_lr(opt, g, &lr) != ALR_OK) die("alr_get_lr");
            printf("lr %zu %.17g\n", g, lr);
        }
        for (int t = 0; t < NT; t++)
            for (size_t e = 0; e < LENS[t]; e++) printf("param %d %zu %.9g\n", t, e, m.full[t][e]);
    }
    alr_destroy(opt);
    for (int t = 0; t < NT; t++) {
        free(m.full[t]);
        free(m.slice[t]);
        free(grad[t]);
        free(sum_sq[t]);
        free(curv[t]);
    }
    MPI_Finalize();
    return 0;
}
