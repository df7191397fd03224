// Tests of bindings/cpp/autolr.hpp: library errors become autolr::Error with status and
// message; the RAII handle is move-only and moves cleanly; save/load resumes bit-exactly; an
// exception thrown by a callback surfaces as autolr::Error(ALR_CALLBACK_FAILED) with the
// original exception nested, and never crosses into the library. Built and run by run.sh.

#include <autolr.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace {

int failures = 0;
int checks = 0;

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        ++checks;                                                         \
        if (!(cond)) {                                                    \
            ++failures;                                                   \
            std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);  \
            std::printf(__VA_ARGS__);                                     \
            std::printf("\n");                                            \
        }                                                                 \
    } while (0)

bool contains(const std::string& haystack, const std::string& needle) {
    return haystack.find(needle) != std::string::npos;
}

/// Runs `f`, expecting an autolr::Error with `status` whose message contains `needle`.
template <typename F>
void expect_error(const char* what, AlrStatus status, const std::string& needle, F&& f) {
    ++checks;
    try {
        f();
        ++failures;
        std::printf("FAIL %s: no exception, expected %s\n", what, alr_status_name(status));
    } catch (const autolr::Error& e) {
        if (e.status() != status || !contains(e.what(), needle)) {
            ++failures;
            std::printf("FAIL %s: got %s \"%s\", expected %s containing \"%s\"\n", what, e.status_name(), e.what(),
                        alr_status_name(status), needle.c_str());
        }
    } catch (const std::exception& e) {
        ++failures;
        std::printf("FAIL %s: got a std::exception that is not autolr::Error: %s\n", what, e.what());
    }
}

// A small problem: loss 0.5·Σ h(θ − c)² over two tensors.
struct Problem {
    std::vector<float> p0{0.5f, -1.0f, 2.0f, 0.25f}, p1{1.0f, -0.5f, 0.0f};
    std::vector<float> g0 = std::vector<float>(4), g1 = std::vector<float>(3);
    std::vector<float> c0{0.1f, 0.2f, -0.3f, 0.0f}, c1{-0.1f, 0.3f, 0.05f};

    static double half_sq(autolr::span<const float> p, const std::vector<float>& c) {
        double s = 0.0;
        for (std::size_t i = 0; i < p.size(); ++i) s += 0.5 * (1.0 + double(i)) * (double(p[i]) - c[i]) * (double(p[i]) - c[i]);
        return s;
    }
    double loss_at(autolr::span<const float> a, autolr::span<const float> b) const { return half_sq(a, c0) + half_sq(b, c1); }
    double loss() const { return loss_at(p0, p1); }
    void grads() {
        for (std::size_t i = 0; i < g0.size(); ++i) g0[i] = float((1.0 + double(i)) * (double(p0[i]) - c0[i]));
        for (std::size_t i = 0; i < g1.size(); ++i) g1[i] = float((1.0 + double(i)) * (double(p1[i]) - c1[i]));
    }
    std::vector<std::size_t> lens() const { return {p0.size(), p1.size()}; }
};

void test_version() {
    CHECK(autolr::version() == ALR_VERSION, "version %s, header %s", autolr::version().c_str(), ALR_VERSION);
    CHECK(autolr::abi_version() == ALR_ABI_VERSION, "ABI %u, header %u", autolr::abi_version(), ALR_ABI_VERSION);
}

void test_errors() {
    expect_error("unknown algorithm", ALR_INVALID_ARGUMENT, "unknown algorithm", [] {
        autolr::Optimizer opt("no-such-algorithm", {3});
    });
    expect_error("zero-length tensor", ALR_INVALID_ARGUMENT, "", [] { autolr::Optimizer opt("sgd", {3, 0}); });
    expect_error("groups count", ALR_SHAPE_MISMATCH, "groups has 1 ids for 2 tensors", [] {
        autolr::Optimizer opt("sgd", {3, 2}, {0});
    });
    Problem pr;
    autolr::Optimizer opt("adam", pr.lens());
    expect_error("unknown option", ALR_INVALID_ARGUMENT, "no_such_option", [&] { opt.set_option("no_such_option", 1.0); });
    expect_error("option out of range", ALR_INVALID_ARGUMENT, "beta1", [&] { opt.set_option("beta1", 1.5); });
    expect_error("no such group", ALR_INVALID_ARGUMENT, "", [&] { opt.set_group_option(7, "lr", 0.1); });
    // The library's message is carried verbatim: it equals alr_last_error() right after.
    try {
        opt.set_option("no_such_option", 1.0);
    } catch (const autolr::Error& e) {
        CHECK(std::string(e.what()) == alr_last_error(), "message '%s' differs from alr_last_error '%s'", e.what(),
              alr_last_error());
        CHECK(std::strcmp(e.status_name(), "ALR_INVALID_ARGUMENT") == 0, "status name %s", e.status_name());
        const std::runtime_error& base = e;  // it is a std::runtime_error
        CHECK(std::string(base.what()).size() > 10, "message too short: %s", base.what());
    }
    // Lengths are checked by the wrapper (the C API sees only pointers).
    pr.grads();
    std::vector<float> short_grad(3);
    expect_error("grad length", ALR_SHAPE_MISMATCH, "tensor 0: grads has 3 elements, expected 4", [&] {
        opt.step({pr.p0, pr.p1}, {short_grad, pr.g1});
    });
    expect_error("tensor count", ALR_SHAPE_MISMATCH, "params has 1 tensors", [&] { opt.step({pr.p0}, {pr.g0, pr.g1}); });
    // A non-finite gradient is the library's check: parameters are left unchanged.
    const std::vector<float> before = pr.p0;
    pr.g0[2] = std::nanf("");
    expect_error("non-finite grad", ALR_NON_FINITE, "", [&] { opt.step({pr.p0, pr.p1}, {pr.g0, pr.g1}); });
    CHECK(pr.p0 == before, "parameters changed by a failed step");
    // An input the algorithm does not use.
    pr.grads();
    autolr::StepInputs in;
    in.loss_fn = [](const autolr::Views&) { return 0.0; };
    expect_error("loss_fn to adam", ALR_UNSUPPORTED, "", [&] { opt.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, in); });
    // Per-sample data without N.
    autolr::StepInputs s;
    s.sum_sq = {pr.g0, pr.g1};
    expect_error("sum_sq without batch_size", ALR_INVALID_ARGUMENT, "batch_size", [&] {
        opt.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, s);
    });
    // A bug inside the library is an error, not a crash (checked through the C API the header wraps).
    CHECK(alr_selftest_panic() == ALR_PANIC, "alr_selftest_panic did not return ALR_PANIC");
}

void test_move() {
    static_assert(!std::is_copy_constructible_v<autolr::Optimizer>, "Optimizer must not be copyable");
    static_assert(!std::is_copy_assignable_v<autolr::Optimizer>, "Optimizer must not be copy-assignable");
    static_assert(std::is_nothrow_move_constructible_v<autolr::Optimizer>, "move must not throw");
    static_assert(std::is_nothrow_move_assignable_v<autolr::Optimizer>, "move-assign must not throw");

    Problem pr;
    autolr::Optimizer a("momentum", pr.lens());
    a.set_option("lr", 0.05);
    AlrOptimizer* raw = a.raw();
    CHECK(raw != nullptr && static_cast<bool>(a), "fresh optimizer has no handle");

    autolr::Optimizer b(std::move(a));
    CHECK(b.raw() == raw, "move construction did not transfer the handle");
    CHECK(a.raw() == nullptr && !a, "moved-from optimizer still holds a handle");  // NOLINT(bugprone-use-after-move)
    CHECK(b.lens().size() == 2 && a.lens().empty(), "lens not moved");             // NOLINT
    CHECK(std::fabs(b.get_option("lr") - 0.05) < 1e-12, "option lost in the move: %g", b.get_option("lr"));
    expect_error("use after move", ALR_WRONG_STATE, "moved from", [&] { a.lr(0); });  // NOLINT
    // Calls that take buffers say so too, before checking them against the (now empty) lens.
    expect_error("step after move", ALR_WRONG_STATE, "moved from", [&] { a.step({pr.p0, pr.p1}, {pr.g0, pr.g1}); });  // NOLINT
    expect_error("train after move", ALR_WRONG_STATE, "moved from", [&] { a.train({pr.p0, pr.p1}); });  // NOLINT
    pr.grads();
    b.step({pr.p0, pr.p1}, {pr.g0, pr.g1});

    // Move assignment destroys the target's old handle and takes the source's.
    autolr::Optimizer c("sgd", {1});
    AlrOptimizer* old_c = c.raw();
    c = std::move(b);
    CHECK(c.raw() == raw && b.raw() == nullptr, "move assignment did not transfer the handle");  // NOLINT
    // The old handle was destroyed: the library no longer knows it.
    CHECK(alr_destroy(old_c) == ALR_INVALID_ARGUMENT, "the overwritten handle was not destroyed");
    c = std::move(c);  // self-move keeps the handle
    CHECK(c.raw() == raw, "self move-assignment lost the handle");
    CHECK(c.momentum(0) > 0.0, "momentum %g", c.momentum(0));

    // Optimizers live in containers by moving.
    std::vector<autolr::Optimizer> many;
    for (int i = 0; i < 5; ++i) many.emplace_back("adam", std::vector<std::size_t>{3});
    many.push_back(std::move(c));
    CHECK(many.back().raw() == raw, "handle lost when moved into a vector");
}

void test_save_load() {
    for (const char* algorithm : {"adam", "momentum", "auto-sgd", "gi"}) {
        Problem pa, pb;
        autolr::Optimizer a(algorithm, pa.lens(), {0, 0});
        if (std::strcmp(algorithm, "gi") == 0) a.set_option("base", "adam");
        auto step = [](autolr::Optimizer& opt, Problem& pr, const char* alg) {
            pr.grads();
            autolr::StepInputs in;
            if (std::strncmp(alg, "auto-", 5) == 0) {
                std::vector<float> s0(pr.g0.size()), s1(pr.g1.size());
                for (std::size_t i = 0; i < s0.size(); ++i) s0[i] = 4.0f * pr.g0[i] * pr.g0[i] + 0.01f;
                for (std::size_t i = 0; i < s1.size(); ++i) s1[i] = 4.0f * pr.g1[i] * pr.g1[i] + 0.01f;
                in.sum_sq = {s0, s1};
                in.batch_size = 4;
                opt.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, in);
                return;
            }
            if (std::strcmp(alg, "gi") == 0) {
                in.loss = pr.loss();
                in.loss_fn = [&pr](const autolr::Views& p) { return pr.loss_at(p[0], p[1]); };
            }
            opt.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, in);
        };
        for (int t = 0; t < 5; ++t) step(a, pa, algorithm);
        const std::vector<std::uint8_t> bytes = a.save();
        CHECK(!bytes.empty(), "%s: empty checkpoint", algorithm);

        autolr::Optimizer b(algorithm, pb.lens(), {0, 0});
        if (std::strcmp(algorithm, "gi") == 0) b.set_option("base", "adam");
        b.load(bytes);
        pb.p0 = pa.p0;
        pb.p1 = pa.p1;
        for (int t = 0; t < 5; ++t) {
            step(a, pa, algorithm);
            step(b, pb, algorithm);
        }
        CHECK(pa.p0 == pb.p0 && pa.p1 == pb.p1, "%s: resumed run differs from the original", algorithm);
        CHECK(a.lr() == b.lr(), "%s: lr differs after resume: %g vs %g", algorithm, a.lr(0), b.lr(0));
        CHECK(b.save() == a.save(), "%s: states differ after resume", algorithm);

        // A corrupted checkpoint is refused and leaves the optimizer as it was.
        std::vector<std::uint8_t> bad = bytes;
        bad[bad.size() / 2] ^= 0x40;
        const std::vector<std::uint8_t> kept = b.save();
        expect_error("corrupted checkpoint", ALR_BAD_CHECKPOINT, "", [&] { b.load(bad); });
        expect_error("truncated checkpoint", ALR_BAD_CHECKPOINT, "", [&] {
            b.load(autolr::span<const std::uint8_t>(bytes.data(), bytes.size() - 1));
        });
        expect_error("empty checkpoint", ALR_BAD_CHECKPOINT, "", [&] { b.load(std::vector<std::uint8_t>{}); });
        CHECK(b.save() == kept, "%s: a refused load changed the state", algorithm);
    }
    // Another algorithm's checkpoint is refused.
    autolr::Optimizer adam("adam", {4, 3}), sgd("sgd", {4, 3});
    expect_error("other algorithm's checkpoint", ALR_BAD_CHECKPOINT, "", [&] { sgd.load(adam.save()); });
}

struct CustomError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

void test_callbacks() {
    Problem pr;
    autolr::Optimizer gi("gi", pr.lens());
    gi.set_option("base", "adam");

    // A working loss callback receives the moved parameters: the caller's own buffers.
    pr.grads();
    int calls = 0;
    autolr::StepInputs in;
    in.loss = pr.loss();
    in.loss_fn = [&](const autolr::Views& p) {
        ++calls;
        CHECK(p.size() == 2 && p[0].data() == pr.p0.data() && p[0].size() == 4 && p[1].size() == 3,
              "loss callback got other buffers than the parameters");
        return pr.loss_at(p[0], p[1]);
    };
    gi.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, in);
    CHECK(calls == 1, "loss callback called %d times", calls);
    bool has_eta = false;
    for (const auto& entry : gi.telemetry(0)) has_eta |= entry.first == "eta";
    CHECK(has_eta, "gi telemetry has no 'eta'");

    // A throwing loss callback: autolr::Error(ALR_CALLBACK_FAILED) with the what() text, the
    // original nested; the optimizer stays usable.
    pr.grads();
    in.loss = pr.loss();
    in.loss_fn = [](const autolr::Views&) -> double { throw CustomError("the batch went away"); };
    ++checks;
    try {
        gi.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, in);
        ++failures;
        std::printf("FAIL throwing loss callback: no exception\n");
    } catch (const autolr::Error& e) {
        CHECK(e.status() == ALR_CALLBACK_FAILED, "status %s", e.status_name());
        CHECK(contains(e.what(), "the batch went away"), "message lacks the exception's text: %s", e.what());
        CHECK(contains(e.what(), "loss callback"), "message lacks the library's text: %s", e.what());
        bool nested = false;
        try {
            std::rethrow_if_nested(e);
        } catch (const CustomError&) {
            nested = true;
        } catch (...) {
        }
        CHECK(nested, "the original exception is not nested");
    }
    // A callback throwing something that is not a std::exception is caught too.
    pr.grads();
    in.loss = pr.loss();
    in.loss_fn = [](const autolr::Views&) -> double { throw 42; };
    expect_error("loss callback throwing an int", ALR_CALLBACK_FAILED, "not a std::exception",
                 [&] { gi.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, in); });
    // And the next step works.
    pr.grads();
    in.loss = pr.loss();
    in.loss_fn = [&](const autolr::Views& p) { return pr.loss_at(p[0], p[1]); };
    gi.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, in);

    // GI's two-phase protocol without a callback: report_loss, and the wrong order is an error.
    pr.grads();
    autolr::StepInputs two;
    two.loss = pr.loss();
    gi.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, two);
    expect_error("save while GI waits for its loss", ALR_WRONG_STATE, "", [&] { gi.save(); });
    gi.report_loss(pr.loss());
    expect_error("report_loss twice", ALR_WRONG_STATE, "", [&] { gi.report_loss(1.0); });

    // The gradient callback (vSGD finite differences), when this build has vSGD.
    bool have_vsgd = true;
    try {
        autolr::Optimizer probe("vsgd-l", {1});
    } catch (const autolr::Error&) {
        have_vsgd = false;
        std::printf("  note: 'vsgd-l' is not an algorithm of this build yet: gradient callback checks skipped\n");
    }
    if (have_vsgd) {
        Problem q;
        autolr::Optimizer v("vsgd-l", q.lens());
        q.grads();
        autolr::StepInputs gin;
        std::vector<float> ps0(8), ps1(6);  // N = 2 per-sample gradients: g ± a bit
        for (std::size_t i = 0; i < 4; ++i) ps0[i] = q.g0[i] + 0.1f, ps0[4 + i] = q.g0[i] - 0.1f;
        for (std::size_t i = 0; i < 3; ++i) ps1[i] = q.g1[i] + 0.1f, ps1[3 + i] = q.g1[i] - 0.1f;
        gin.per_sample = {ps0, ps1};
        gin.batch_size = 2;
        int grad_calls = 0;
        gin.grad_fn = [&](const autolr::Views& p, const autolr::MutViews& out) {
            ++grad_calls;
            CHECK(out.size() == 2 && out[0].size() == 4 && out[1].size() == 3, "gradient callback buffers");
            for (std::size_t i = 0; i < 4; ++i) out[0][i] = float((1.0 + double(i)) * (double(p[0][i]) - q.c0[i]));
            for (std::size_t i = 0; i < 3; ++i) out[1][i] = float((1.0 + double(i)) * (double(p[1][i]) - q.c1[i]));
        };
        v.step({q.p0, q.p1}, {q.g0, q.g1}, gin);
        CHECK(grad_calls >= 1, "gradient callback not called");
        gin.grad_fn = [](const autolr::Views&, const autolr::MutViews&) { throw std::out_of_range("index 9"); };
        expect_error("throwing gradient callback", ALR_CALLBACK_FAILED, "index 9",
                     [&] { v.step({q.p0, q.p1}, {q.g0, q.g1}, gin); });
    }
}

void test_groups_and_readback() {
    Problem pr;
    autolr::Optimizer opt("sgd", pr.lens(), {0, 1});
    opt.set_option("lr", 0.1);
    opt.set_group_option(1, "lr", 0.01);
    CHECK(opt.n_groups() == 2, "n_groups %zu", opt.n_groups());
    CHECK(opt.get_option("lr", 1) == 0.01 && opt.get_option("lr", 0) == 0.1, "group options");
    pr.grads();
    const std::vector<float> p0 = pr.p0, p1 = pr.p1;
    opt.step({pr.p0, pr.p1}, {pr.g0, pr.g1});
    CHECK(std::fabs(pr.p0[1] - (p0[1] - 0.1f * pr.g0[1])) < 1e-6f, "group 0 step");
    CHECK(std::fabs(pr.p1[1] - (p1[1] - 0.01f * pr.g1[1])) < 1e-7f, "group 1 step");
    const std::vector<double> lrs = opt.lr();
    CHECK(lrs.size() == 2 && lrs[0] == 0.1 && lrs[1] == 0.01, "lr() = {%g, %g}", lrs[0], lrs[1]);
    // bool options.
    autolr::Optimizer m("momentum", {3});
    m.set_option("nesterov", true);
    CHECK(m.get_option("nesterov") == 1.0, "nesterov flag not set");
    // C arrays and std::array convert to spans.
    float w[3] = {1, 2, 3}, g[3] = {1, 1, 1};
    m.step({w}, {g});
    CHECK(w[0] < 1.0f, "C-array step did not move the parameter");
}

void test_modes() {
    Problem pr;
    autolr::Optimizer sf("sf-adamw", pr.lens(), {0, 1});
    sf.train({pr.p0, pr.p1});  // the reference's protocol: train() first
    for (int k = 0; k < 3; ++k) {
        pr.grads();
        sf.step({pr.p0, pr.p1}, {pr.g0, pr.g1});
    }
    const std::vector<float> y0 = pr.p0;
    sf.eval({pr.p0, pr.p1});
    CHECK(pr.p0 != y0, "eval left the parameters at y");
    const std::vector<float> x0 = pr.p0;
    expect_error("eval twice", ALR_WRONG_STATE, "eval mode", [&] { sf.eval({pr.p0, pr.p1}); });
    expect_error("step in eval mode", ALR_WRONG_STATE, "eval mode", [&] { sf.step({pr.p0, pr.p1}, {pr.g0, pr.g1}); });
    CHECK(pr.p0 == x0, "a refused call moved the parameters");
    sf.train({pr.p0, pr.p1});
    CHECK(std::fabs(pr.p0[0] - y0[0]) < 1e-6f, "y -> x -> y moved y");
    // Schedule-free over gi (docs/algorithms.md §3.3): GI's base is "base_base"; its loss
    // callback sees y', and while a step waits for its loss report eval is refused.
    autolr::Optimizer over_gi("schedule-free", pr.lens(), {0, 1});
    over_gi.set_option("base", "gi");
    over_gi.set_option("base_base", "adam");
    pr.grads();
    int calls = 0;
    autolr::StepInputs in;
    in.loss = pr.loss();
    in.loss_fn = [&](const autolr::Views& p) {
        ++calls;
        return pr.loss_at(p[0], p[1]);
    };
    over_gi.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, in);
    CHECK(calls == 1, "schedule-free over gi: loss callback called %d times", calls);
    pr.grads();
    autolr::StepInputs two;
    two.loss = pr.loss();
    over_gi.step({pr.p0, pr.p1}, {pr.g0, pr.g1}, two);
    const std::vector<float> waiting = pr.p0;
    expect_error("schedule-free over gi: eval while a loss report is due", ALR_WRONG_STATE, "alr_report_loss",
                 [&] { over_gi.eval({pr.p0, pr.p1}); });
    CHECK(pr.p0 == waiting, "a refused eval moved the parameters");
    over_gi.report_loss(pr.loss());
    over_gi.eval({pr.p0, pr.p1});
    CHECK(pr.p0 != waiting, "schedule-free over gi: eval left the parameters at y");
    autolr::Optimizer sgd("sgd", pr.lens());
    const std::vector<float> before = pr.p0;
    sgd.eval({pr.p0, pr.p1});
    sgd.eval({pr.p0, pr.p1});
    CHECK(pr.p0 == before, "sgd: eval is a no-op");
}

// Every name of the library's list can be created, stepped and given bad input from C++: the
// peers of docs/algorithms.md §6 among them, with their defaults.
void test_algorithms() {
    const std::vector<std::string> names = autolr::algorithms();
    for (const char* peer : {"prodigy", "dadapt-adam", "dog", "ldog", "schedule-free", "sf-adamw", "sf-sgd"})
        CHECK(std::find(names.begin(), names.end(), peer) != names.end(), "autolr::algorithms() lacks %s", peer);
    const std::vector<std::string> cuda = autolr::algorithms(ALR_DEVICE_CUDA);
    CHECK(!cuda.empty() && cuda.size() < names.size(), "CUDA lists %zu of %zu algorithms", cuda.size(), names.size());
    expect_error("algorithms of device 9", ALR_INVALID_ARGUMENT, "device 9", [] { autolr::algorithms(AlrDevice(9)); });
    for (const std::string& name : {std::string("prodigy"), std::string("dadapt-adam"), std::string("dog"), std::string("ldog"),
                                    std::string("schedule-free"), std::string("sf-adamw"), std::string("sf-sgd")}) {
        Problem pr;
        autolr::Optimizer opt(name, pr.lens(), {0, 1});
        const std::vector<float> start = pr.p0;
        for (int k = 0; k < 3; ++k) {
            pr.grads();
            opt.step({pr.p0, pr.p1}, {pr.g0, pr.g1});
        }
        CHECK(pr.p0 != start, "%s: three steps did not move the parameters", name.c_str());
        const std::string what = name + ": ";
        expect_error((what + "unknown option").c_str(), ALR_INVALID_ARGUMENT, "accepted", [&] { opt.set_option("no_such_option", 1.0); });
        // lr < 0 is outside every peer's range ((0, ∞) for dog and ldog, [0, ∞) for the others)
        expect_error((what + "lr = -1").c_str(), ALR_INVALID_ARGUMENT, "'lr'", [&] { opt.set_option("lr", -1.0); });
        expect_error((what + "report_loss").c_str(), ALR_WRONG_STATE, name, [&] { opt.report_loss(1.0); });
        const std::vector<float> before = pr.p0;
        pr.grads();
        pr.g1[2] = std::numeric_limits<float>::infinity();
        expect_error((what + "inf in the last tensor's grad").c_str(), ALR_NON_FINITE, "tensor 1", [&] { opt.step({pr.p0, pr.p1}, {pr.g0, pr.g1}); });
        CHECK(pr.p0 == before, "%s: a refused step moved the parameters", name.c_str());
        std::vector<std::uint8_t> state = opt.save();
        state[state.size() / 2] ^= 0x10;
        expect_error((what + "corrupt checkpoint").c_str(), ALR_BAD_CHECKPOINT, "", [&] { opt.load(state); });
    }
}

}  // namespace

int main() {
    std::printf("autolr.hpp tests against autolr %s (ABI %u)\n", autolr::version().c_str(), autolr::abi_version());
    test_version();
    test_errors();
    test_move();
    test_save_load();
    test_callbacks();
    test_groups_and_readback();
    test_modes();
    test_algorithms();
    std::printf("%d passed, %d failed\n", checks - failures, failures);
    return failures == 0 ? 0 : 1;
}
