// Softmax logistic regression on Fashion-MNIST, trained through autolr.hpp with
//   * 'adam'       — a fixed-rate baseline (lr 1e-3);
//   * 'gi'         — GI wrapping adam: the learning rate adapts from the loss before and after
//                    each move, which GI gets from a loss callback on the same minibatch;
//   * 'auto-sgd'   — AutoOpt over plain gradient steps: learning rate and momentum from the
//                    per-sample gradient statistics S = Σ_i g_i² (for a dense layer one product
//                    of squared inputs and squared output-gradients; no per-sample gradients are
//                    formed). Any 'auto-*' name given with --algorithms gets S the same way.
//
// Data: the gzip IDX files in /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist)
// are decompressed by running `gzip -dc` through popen(), so building needs no zlib headers or
// -lz; without the files (or without gzip) a deterministic built-in stand-in dataset is used.
// The first output line says which.
//
// Build (tests/cpp/run.sh does this):
//   g++ -std=c++17 -O2 -Iinclude -Ibindings/cpp examples/cpp/logreg.cpp
//       -Ltarget/release -lautolr -Wl,-rpath,$PWD/target/release -o logreg   (one line)
// Usage: logreg [--steps N] [--batch B] [--data DIR] [--fallback] [--algorithms auto,adam,gi,auto-sgd]
//   --steps N   minibatch steps per algorithm (default: one epoch)

#include <autolr.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kFeatures = 784;
constexpr std::size_t kClasses = 10;
constexpr const char* kDefaultDir = "/usr/share/datasets/fashion-mnist";

struct Dataset {
    std::vector<float> train_x, test_x;  // row-major, kFeatures per row, values in [0, 1]
    std::vector<std::uint8_t> train_y, test_y;
    std::string source;
    std::size_t n_train() const { return train_y.size(); }
    std::size_t n_test() const { return test_y.size(); }
};

// ---------------------------------------------------------------------------------------------
// Data
// ---------------------------------------------------------------------------------------------

/// Decompresses a gzip file with `gzip -dc` (popen); returns false with `why` on failure.
bool gunzip(const std::string& path, std::vector<std::uint8_t>& out, std::string& why) {
    if (FILE* probe = std::fopen(path.c_str(), "rb")) {
        std::fclose(probe);
    } else {
        why = path + ": not found";
        return false;
    }
    const std::string command = "gzip -dc '" + path + "' 2>/dev/null";
    FILE* pipe = popen(command.c_str(), "r");
    if (pipe == nullptr) {
        why = "cannot run gzip";
        return false;
    }
    out.clear();
    std::vector<std::uint8_t> chunk(1 << 16);
    std::size_t got = 0;
    while ((got = std::fread(chunk.data(), 1, chunk.size(), pipe)) > 0)
        out.insert(out.end(), chunk.begin(), chunk.begin() + static_cast<std::ptrdiff_t>(got));
    const int status = pclose(pipe);
    if (status != 0) {
        why = path + ": gzip -dc failed (status " + std::to_string(status) + ")";
        return false;
    }
    return true;
}

std::uint32_t be32(const std::uint8_t* p) {
    return (std::uint32_t(p[0]) << 24) | (std::uint32_t(p[1]) << 16) | (std::uint32_t(p[2]) << 8) | p[3];
}

bool read_images(const std::string& path, std::vector<float>& x, std::size_t& count, std::string& why) {
    std::vector<std::uint8_t> raw;
    if (!gunzip(path, raw, why)) return false;
    if (raw.size() < 16 || be32(raw.data()) != 0x00000803) {
        why = path + ": not an IDX image file";
        return false;
    }
    count = be32(raw.data() + 4);
    if (be32(raw.data() + 8) * be32(raw.data() + 12) != kFeatures || raw.size() != 16 + count * kFeatures) {
        why = path + ": unexpected image size or truncated file";
        return false;
    }
    x.resize(count * kFeatures);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = raw[16 + i] / 255.0f;
    return true;
}

bool read_labels(const std::string& path, std::vector<std::uint8_t>& y, std::size_t count, std::string& why) {
    std::vector<std::uint8_t> raw;
    if (!gunzip(path, raw, why)) return false;
    if (raw.size() < 8 || be32(raw.data()) != 0x00000801 || be32(raw.data() + 4) != count ||
        raw.size() != 8 + count) {
        why = path + ": not an IDX label file matching its images";
        return false;
    }
    y.assign(raw.begin() + 8, raw.end());
    for (auto label : y)
        if (label >= kClasses) {
            why = path + ": label out of range";
            return false;
        }
    return true;
}

bool load_fashion_mnist(const std::string& dir, Dataset& d, std::string& why) {
    std::size_t n_train = 0, n_test = 0;
    if (!read_images(dir + "/train-images-idx3-ubyte.gz", d.train_x, n_train, why)) return false;
    if (!read_labels(dir + "/train-labels-idx1-ubyte.gz", d.train_y, n_train, why)) return false;
    if (!read_images(dir + "/t10k-images-idx3-ubyte.gz", d.test_x, n_test, why)) return false;
    if (!read_labels(dir + "/t10k-labels-idx1-ubyte.gz", d.test_y, n_test, why)) return false;
    d.source = "Fashion-MNIST from " + dir;
    return true;
}

/// splitmix64: small, seedable, identical on every platform.
struct Rng {
    std::uint64_t state;
    std::uint64_t next() {
        std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }
    std::size_t below(std::size_t n) { return static_cast<std::size_t>(next() % n); }
    double normal() {  // Box–Muller
        const double u = std::max(uniform(), 1e-300), v = uniform();
        return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
    }
};

/// A deterministic stand-in: 10 blurry blob prototypes on a 28×28 grid, each sample its
/// class's prototype blended with another class, shifted, and covered in noise, clipped to [0,1].
/// Learnable by a linear model well above chance, not perfectly.
void make_fallback(Dataset& d, std::size_t n_train, std::size_t n_test) {
    Rng rng{20240611};
    std::vector<std::vector<double>> protos(kClasses, std::vector<double>(kFeatures, 0.0));
    for (auto& image : protos) {
        const std::size_t blobs = 3 + rng.below(3);
        for (std::size_t b = 0; b < blobs; ++b) {
            const double cr = 7 + 14 * rng.uniform(), cc = 7 + 14 * rng.uniform();
            const double sr = 1.5 + 3.5 * rng.uniform(), sc = 1.5 + 3.5 * rng.uniform();
            const double amp = 0.4 + 0.6 * rng.uniform();
            for (int r = 0; r < 28; ++r)
                for (int c = 0; c < 28; ++c) {
                    const double dr = (r - cr) / sr, dc = (c - cc) / sc;
                    image[r * 28 + c] += amp * std::exp(-0.5 * (dr * dr + dc * dc));
                }
        }
        const double peak = *std::max_element(image.begin(), image.end());
        for (auto& p : image) p /= peak;
    }
    auto draw = [&](std::size_t count, std::vector<float>& x, std::vector<std::uint8_t>& y) {
        x.assign(count * kFeatures, 0.0f);
        y.resize(count);
        for (std::size_t i = 0; i < count; ++i) {
            const std::size_t cls = i % kClasses;
            const std::size_t other = (cls + 1 + rng.below(kClasses - 1)) % kClasses;
            const double blend = 0.5 * std::pow(rng.uniform(), 1.5);
            const int shift_r = int(rng.below(7)) - 3, shift_c = int(rng.below(7)) - 3;
            const double contrast = 0.6 + 0.4 * rng.uniform();
            y[i] = static_cast<std::uint8_t>(cls);
            for (int r = 0; r < 28; ++r)
                for (int c = 0; c < 28; ++c) {
                    const int sr = r - shift_r, sc = c - shift_c;
                    double clean = 0.0;
                    if (sr >= 0 && sr < 28 && sc >= 0 && sc < 28)
                        clean = (1 - blend) * protos[cls][sr * 28 + sc] + blend * protos[other][sr * 28 + sc];
                    const double noisy = contrast * clean + 0.15 * rng.normal();
                    x[i * kFeatures + r * 28 + c] = static_cast<float>(std::min(1.0, std::max(0.0, noisy)));
                }
        }
    };
    draw(n_train, d.train_x, d.train_y);
    draw(n_test, d.test_x, d.test_y);
    d.source = "built-in fallback dataset (deterministic, synthetic)";
}

// ---------------------------------------------------------------------------------------------
// The model: logits = x Wᵀ + b, mean softmax cross-entropy
// ---------------------------------------------------------------------------------------------

struct Model {
    std::vector<float> w = std::vector<float>(kClasses * kFeatures, 0.0f);  // [class][feature]
    std::vector<float> b = std::vector<float>(kClasses, 0.0f);
};

/// Per-sample softmax probabilities into `prob` (rows × kClasses); returns the summed loss and
/// counts correct predictions.
double forward(const float* w, const float* b, const float* x, const std::uint8_t* y, std::size_t rows,
               std::vector<double>& prob, std::size_t* correct) {
    prob.resize(rows * kClasses);
    double loss = 0.0;
    std::size_t right = 0;
    for (std::size_t i = 0; i < rows; ++i) {
        const float* xi = x + i * kFeatures;
        double* p = prob.data() + i * kClasses;
        for (std::size_t k = 0; k < kClasses; ++k) {
            const float* wk = w + k * kFeatures;
            double z = b[k];
            for (std::size_t j = 0; j < kFeatures; ++j) z += double(wk[j]) * xi[j];
            p[k] = z;
        }
        const std::size_t argmax = std::size_t(std::max_element(p, p + kClasses) - p);
        const double zmax = p[argmax];
        double sum = 0.0;
        for (std::size_t k = 0; k < kClasses; ++k) sum += (p[k] = std::exp(p[k] - zmax));
        for (std::size_t k = 0; k < kClasses; ++k) p[k] /= sum;
        loss += -std::log(std::max(p[y[i]], 1e-300));
        right += argmax == y[i];
    }
    if (correct != nullptr) *correct = right;
    return loss;
}

/// Mean loss and gradients on a batch; with `sw`/`sb` also S = Σ_i g_i² (per-sample gradient
/// of sample i's own loss: g_i(W) = δ_i x_iᵀ with δ_i = p_i − onehot(y_i), so S_W = (δ²)ᵀ(x²)).
double loss_and_grads(const Model& m, const float* x, const std::uint8_t* y, std::size_t rows,
                      std::vector<float>& gw, std::vector<float>& gb, std::vector<float>* sw,
                      std::vector<float>* sb) {
    std::vector<double> prob;
    const double loss = forward(m.w.data(), m.b.data(), x, y, rows, prob, nullptr) / double(rows);
    std::vector<double> acc_w(kClasses * kFeatures, 0.0), acc_b(kClasses, 0.0);
    std::vector<double> acc_sw(sw ? kClasses * kFeatures : 0, 0.0), acc_sb(sb ? kClasses : 0, 0.0);
    for (std::size_t i = 0; i < rows; ++i) {
        const float* xi = x + i * kFeatures;
        for (std::size_t k = 0; k < kClasses; ++k) {
            const double delta = prob[i * kClasses + k] - (k == y[i] ? 1.0 : 0.0);
            acc_b[k] += delta;
            double* row = acc_w.data() + k * kFeatures;
            for (std::size_t j = 0; j < kFeatures; ++j) row[j] += delta * xi[j];
            if (sw != nullptr) {
                const double d2 = delta * delta;
                acc_sb[k] += d2;
                double* srow = acc_sw.data() + k * kFeatures;
                for (std::size_t j = 0; j < kFeatures; ++j) srow[j] += d2 * double(xi[j]) * xi[j];
            }
        }
    }
    gw.resize(acc_w.size());
    gb.resize(acc_b.size());
    for (std::size_t i = 0; i < acc_w.size(); ++i) gw[i] = float(acc_w[i] / double(rows));
    for (std::size_t k = 0; k < kClasses; ++k) gb[k] = float(acc_b[k] / double(rows));
    if (sw != nullptr) {
        sw->assign(acc_sw.begin(), acc_sw.end());
        sb->assign(acc_sb.begin(), acc_sb.end());
    }
    return loss;
}

struct Eval {
    double loss, accuracy;
};

Eval evaluate(const Model& m, const Dataset& d) {
    std::vector<double> prob;
    std::size_t correct = 0;
    const double loss = forward(m.w.data(), m.b.data(), d.test_x.data(), d.test_y.data(), d.n_test(), prob, &correct);
    return {loss / double(d.n_test()), double(correct) / double(d.n_test())};
}

// ---------------------------------------------------------------------------------------------
// Training
// ---------------------------------------------------------------------------------------------

struct Batch {
    std::vector<float> x;
    std::vector<std::uint8_t> y;
};

/// Trains a fresh model with `algorithm` for `steps` minibatches of `batch` (seeded shuffling,
/// identical batches for every algorithm). Returns the final test accuracy.
double train(const std::string& algorithm, const Dataset& d, std::size_t steps, std::size_t batch) {
    Model m;
    autolr::Optimizer opt = [&] {
        if (algorithm == "gi") {
            autolr::Optimizer o("gi", {m.w.size(), m.b.size()}, {0, 0});  // one group: one η
            o.set_option("base", "adam");
            o.set_option("lr", 1e-3);  // GI's initial η
            return o;
        }
        autolr::Optimizer o(algorithm, {m.w.size(), m.b.size()});
        if (algorithm == "adam") o.set_option("lr", 1e-3);
        return o;
    }();
    const bool wants_sum_sq = algorithm.rfind("auto-", 0) == 0;

    std::vector<std::size_t> order(d.n_train());
    std::iota(order.begin(), order.end(), 0);
    Rng rng{7};
    std::size_t cursor = order.size();  // forces a shuffle first
    Batch cur;
    std::vector<float> gw, gb, sw, sb;
    const auto start = std::chrono::steady_clock::now();
    const std::size_t report_every = std::max<std::size_t>(1, steps / 5);
    double running = 0.0;
    std::size_t running_n = 0;
    for (std::size_t t = 1; t <= steps; ++t) {
        if (cursor + batch > order.size()) {  // new epoch: Fisher–Yates with the seeded rng
            for (std::size_t i = order.size() - 1; i > 0; --i) std::swap(order[i], order[rng.below(i + 1)]);
            cursor = 0;
        }
        cur.x.resize(batch * kFeatures);
        cur.y.resize(batch);
        for (std::size_t i = 0; i < batch; ++i) {
            const std::size_t src = order[cursor + i];
            std::copy_n(d.train_x.begin() + std::ptrdiff_t(src * kFeatures), kFeatures, cur.x.begin() + std::ptrdiff_t(i * kFeatures));
            cur.y[i] = d.train_y[src];
        }
        cursor += batch;

        const double loss = loss_and_grads(m, cur.x.data(), cur.y.data(), batch, gw, gb,
                                           wants_sum_sq ? &sw : nullptr, wants_sum_sq ? &sb : nullptr);
        autolr::StepInputs in;
        if (algorithm == "gi") {
            in.loss = loss;
            // The loss on the same minibatch at the moved parameters (`p` views m.w and m.b).
            in.loss_fn = [&](const autolr::Views& p) {
                std::vector<double> prob;
                return forward(p[0].data(), p[1].data(), cur.x.data(), cur.y.data(), batch, prob, nullptr) /
                       double(batch);
            };
        }
        if (wants_sum_sq) {
            in.sum_sq = {sw, sb};
            in.batch_size = batch;
            in.per_sample_scale = autolr::SampleScale::Sample;
        }
        opt.step({m.w, m.b}, {gw, gb}, in);

        running += loss;
        ++running_n;
        if (t % report_every == 0 || t == steps) {
            std::ostringstream extra;
            if (algorithm.rfind("auto-", 0) == 0) extra << "  momentum " << opt.momentum(0);
            std::printf("  %-9s step %5zu  train loss %.4f  lr %.3e%s\n", algorithm.c_str(), t,
                        running / double(running_n), opt.lr(0), extra.str().c_str());
            running = 0.0;
            running_n = 0;
        }
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const Eval e = evaluate(m, d);
    std::printf("%-9s %zu steps in %.2fs: test loss %.4f, accuracy %.4f, final lr %.3e\n", algorithm.c_str(), steps,
                seconds, e.loss, e.accuracy, opt.lr(0));
    if (algorithm == "gi") {
        std::printf("  gi telemetry:");
        for (const auto& [name, value] : opt.telemetry(0)) std::printf(" %s=%g", name.c_str(), value);
        std::printf("\n");
    }
    return e.accuracy;
}

int usage(const char* argv0) {
    std::fprintf(stderr,
                 "usage: %s [--steps N] [--batch B] [--data DIR] [--fallback] [--algorithms auto,adam,gi,auto-sgd]\n",
                 argv0);
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    std::size_t steps = 0, batch = 128;
    std::string dir = kDefaultDir, algorithms = "auto,adam,gi,auto-sgd";
    bool force_fallback = false;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
        if (arg == "--steps") steps = std::strtoull(value().c_str(), nullptr, 10);
        else if (arg == "--batch") batch = std::strtoull(value().c_str(), nullptr, 10);
        else if (arg == "--data") dir = value();
        else if (arg == "--fallback") force_fallback = true;
        else if (arg == "--algorithms") algorithms = value();
        else return usage(argv[0]);
    }
    if (batch < 2) return usage(argv[0]);

    Dataset d;
    std::string why = "--fallback given";
    if (force_fallback || !load_fashion_mnist(dir, d, why)) {
        make_fallback(d, 6000, 1000);
        d.source += " (" + why + ")";
    }
    // First line: which data this run uses.
    std::printf("data: %s: %zu train, %zu test images\n", d.source.c_str(), d.n_train(), d.n_test());
    std::printf("autolr %s (ABI %u)\n", autolr::version().c_str(), autolr::abi_version());
    if (steps == 0) steps = d.n_train() / batch;  // one epoch

    try {
        std::stringstream list(algorithms);
        std::string name;
        bool ok = true;
        while (std::getline(list, name, ',')) {
            if (name.empty()) continue;
            const double accuracy = train(name, d, steps, batch);
            // Chance is 0.10; every algorithm should be far above it after a few hundred steps.
            if (!(accuracy > 0.5)) {
                std::printf("FAILED: %s reached accuracy %.4f, expected > 0.5\n", name.c_str(), accuracy);
                ok = false;
            }
        }
        return ok ? 0 : 1;
    } catch (const autolr::Error& e) {
        std::fprintf(stderr, "autolr error %s: %s\n", e.status_name(), e.what());
        return 1;
    }
}
