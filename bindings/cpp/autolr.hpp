// autolr.hpp — header-only C++17 wrapper over the autolr C ABI (include/autolr.h).
//
// Learning rates (and momentum) that set themselves, for any C++ training loop. This header
// adds no state and no build step of its own: include it (with include/ on the include path)
// and link the native library (`-lautolr`). Style after wasmtime's C++ layer: thin RAII
// classes that own a C handle, `raw()` to reach the C API, errors as exceptions.
//
//     #include <autolr.hpp>
//
//     std::vector<float> w(784 * 10), b(10), gw(w.size()), gb(b.size());
//     autolr::Optimizer opt("adam", {w.size(), b.size()});      // one group per tensor
//     opt.set_option("lr", 1e-3);                               // every group
//     opt.set_group_option(1, "weight_decay", 0.0);             // one group
//     ...compute gw, gb...
//     opt.step({w, b}, {gw, gb});                               // updates w and b in place
//     double lr0 = opt.lr(0);
//
//     // GI re-evaluates the loss on the same batch after its move:
//     autolr::Optimizer gi("gi", {w.size(), b.size()});
//     gi.set_option("base", "adam");
//     autolr::StepInputs in;
//     in.loss = loss_at_current_params;
//     in.loss_fn = [&](const autolr::Views& params) { return batch_loss(params[0], params[1]); };
//     gi.step({w, b}, {gw, gb}, in);
//
// Conventions (the C ABI's, see DESIGN.md "The C ABI"):
//   * The caller owns every buffer. `step` borrows `params` (updated in place), `grads` and the
//     optional inputs for the duration of the call only; nothing is retained.
//   * Every failure throws `autolr::Error` (a `std::runtime_error`) carrying the status code and
//     the library's message. On failure `step` leaves parameters and state unchanged, except
//     when GI's loss callback fails after the move (the move stands; see alr_step).
//   * Callbacks are `std::function`s. They run inside `step`, on the calling thread. An exception
//     thrown by a callback never crosses into the library: the trampoline catches it, returns
//     non-zero, and `step` then throws `autolr::Error` with status ALR_CALLBACK_FAILED whose
//     message includes the exception's `what()`. The original exception is nested
//     (`std::rethrow_if_nested(e)` rethrows it).
//   * `autolr::span<T>` is a non-owning (pointer, size) view, because C++17 has no std::span.
//     It converts implicitly from std::vector, std::array, C arrays and anything with
//     `.data()`/`.size()` (std::span too, under C++20), so `opt.step({w, b}, {gw, gb})` works.
//     The wrapper checks every view's length against the registered tensor lengths and
//     throws ALR_SHAPE_MISMATCH naming the tensor, which the C API alone cannot do.
//
// Thread-safety: an Optimizer may be moved between threads but must not be used from two
// threads at once (the library's last-error text is per thread, which this header relies on).

#ifndef AUTOLR_HPP
#define AUTOLR_HPP

#include <autolr.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace autolr {

// ---------------------------------------------------------------------------------------------
// span: a minimal non-owning view (pointer + element count)
// ---------------------------------------------------------------------------------------------

/// A non-owning view of `size()` contiguous `T`s; the pointee must outlive every use.
/// `span<const float>` accepts everything `span<float>` does, and a `span<float>`.
template <typename T>
class span {
public:
    using element_type = T;
    using value_type = std::remove_cv_t<T>;
    using size_type = std::size_t;
    using iterator = T*;

    constexpr span() noexcept = default;
    constexpr span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}

    /// From a C array.
    template <std::size_t N>
    constexpr span(T (&array)[N]) noexcept : data_(array), size_(N) {}  // NOLINT: implicit on purpose

    /// From any contiguous container with `.data()` convertible to `T*` and `.size()`:
    /// std::vector, std::array, std::string, std::span, another autolr::span …
    template <typename C,
              typename = std::enable_if_t<
                  !std::is_same_v<std::remove_cv_t<std::remove_reference_t<C>>, span> &&
                  std::is_convertible_v<decltype(std::declval<C&>().data()), T*> &&
                  std::is_convertible_v<decltype(std::declval<C&>().size()), std::size_t>>>
    constexpr span(C& container) noexcept  // NOLINT: implicit on purpose
        : data_(container.data()), size_(static_cast<std::size_t>(container.size())) {}

    constexpr T* data() const noexcept { return data_; }
    constexpr std::size_t size() const noexcept { return size_; }
    constexpr bool empty() const noexcept { return size_ == 0; }
    constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }
    constexpr T* begin() const noexcept { return data_; }
    constexpr T* end() const noexcept { return data_ + size_; }

private:
    T* data_ = nullptr;
    std::size_t size_ = 0;
};

/// Read-only views of tensors, in registration order (what callbacks receive).
using Views = std::vector<span<const float>>;
/// Writable views of tensors, in registration order.
using MutViews = std::vector<span<float>>;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// A failure reported by the library (or by this header's own argument checks). `what()` is
/// the library's explanation; `status()` the C status code.
class Error : public std::runtime_error {
public:
    Error(AlrStatus status, const std::string& message)
        : std::runtime_error(message), status_(status) {}

    /// The C status code (ALR_INVALID_ARGUMENT, ALR_SHAPE_MISMATCH, …).
    AlrStatus status() const noexcept { return status_; }

    /// The status code's name ("ALR_SHAPE_MISMATCH"); static storage.
    const char* status_name() const noexcept { return alr_status_name(status_); }

private:
    AlrStatus status_;
};

namespace detail {

/// Throws the library's last error when `status` is not ALR_OK.
inline void check(AlrStatus status) {
    if (status != ALR_OK) {
        const char* message = alr_last_error();
        throw Error(status, message != nullptr && *message != '\0'
                                ? std::string(message)
                                : std::string(alr_status_name(status)));
    }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Library information
// ---------------------------------------------------------------------------------------------

/// The loaded library's version ("MAJOR.MINOR.PATCH").
inline std::string version() { return alr_version(); }

/// The loaded library's C ABI version; this header was compiled against ALR_ABI_VERSION.
inline std::uint32_t abi_version() noexcept { return alr_abi_version(); }

/// The algorithm names `Optimizer` accepts on `device` (`alr_algorithms`): every one on
/// ALR_DEVICE_CPU, those with CUDA kernels on ALR_DEVICE_CUDA; in the library's order.
inline std::vector<std::string> algorithms(AlrDevice device = ALR_DEVICE_CPU) {
    const char* list = alr_algorithms(device);
    if (list == nullptr)
        throw Error(ALR_INVALID_ARGUMENT, "algorithms: device " + std::to_string(int(device)) + " is no AlrDevice");
    const std::string all(list);
    std::vector<std::string> names;
    for (std::size_t start = 0;;) {
        const std::size_t end = all.find(',', start);
        names.push_back(all.substr(start, end - start));
        if (end == std::string::npos) return names;
        start = end + 1;
    }
}

// ---------------------------------------------------------------------------------------------
// Step inputs
// ---------------------------------------------------------------------------------------------

/// How `StepInputs::sum_sq` / `per_sample` entries are scaled (AlrSampleScale).
enum class SampleScale : int {
    /// g_i, the gradient of sample i's own loss.
    Sample = ALR_SCALE_SAMPLE,
    /// g_i / N: BackPACK's BatchGrad / SumGradSquared under a mean-reduced loss.
    Mean = ALR_SCALE_MEAN,
};

/// GI's loss callback: the loss on the current batch at `params` (the optimizer's parameters
/// after the move — the very buffers passed to `step`). Throw to report failure.
using LossCallback = std::function<double(const Views& params)>;

/// vSGD's gradient callback: write the gradient on the current batch at `params` (shifted
/// copies owned by the library, not the caller's parameters) into `grads_out` (buffers owned
/// by the library, one per tensor, registered lengths). Throw to report failure.
using GradCallback = std::function<void(const Views& params, const MutViews& grads_out)>;

/// Everything `step` takes besides parameters and gradients; all optional. Leave a vector
/// empty (and a callback unset) for "not given". In C++17 fill it field by field:
///
///     autolr::StepInputs in;
///     in.sum_sq = {sw, sb};
///     in.batch_size = 128;
///     opt.step({w, b}, {gw, gb}, in);
struct StepInputs {
    /// S = Σ_i g_i² per tensor (registered length each, >= 0). Give this or `per_sample`.
    Views sum_sq;
    /// Row-major N × len per-sample gradients per tensor (batch_size · len each).
    Views per_sample;
    /// Scale of `sum_sq` / `per_sample` entries.
    SampleScale per_sample_scale = SampleScale::Sample;
    /// N, the minibatch size; required with per-sample data, ignored otherwise.
    std::size_t batch_size = 0;
    /// Non-negative diagonal curvature per tensor (vSGD).
    Views curvature;
    /// The loss on this batch at the current parameters (GI).
    std::optional<double> loss;
    /// Loss re-evaluation on the same batch (GI); without it GI waits for `report_loss`.
    LossCallback loss_fn;
    /// Gradient re-evaluation on the same batch (vSGD finite-difference curvature).
    GradCallback grad_fn;
};

namespace detail {

/// What the C trampolines need; lives on `step`'s stack for the duration of the call.
struct CallbackContext {
    const LossCallback* loss_fn = nullptr;
    const GradCallback* grad_fn = nullptr;
    const std::vector<std::size_t>* lens = nullptr;
    std::exception_ptr error;  // the first exception a callback threw
};

inline std::string describe(const std::exception_ptr& error) {
    try {
        std::rethrow_exception(error);
    } catch (const std::exception& e) {
        return e.what();
    } catch (...) {
        return "an exception that is not a std::exception";
    }
}

// The trampolines are the only code the library calls. They are noexcept and catch
// everything: an exception must never unwind through Rust frames.
inline std::int32_t loss_trampoline(void* user_data, const float* const* params,
                                    std::size_t n_tensors, double* loss_out) noexcept {
    auto* ctx = static_cast<CallbackContext*>(user_data);
    try {
        if (n_tensors != ctx->lens->size())
            throw Error(ALR_SHAPE_MISMATCH, "loss callback: the library passed " +
                                                std::to_string(n_tensors) + " tensors, registered " +
                                                std::to_string(ctx->lens->size()));
        Views views;
        views.reserve(n_tensors);
        for (std::size_t i = 0; i < n_tensors; ++i)
            views.emplace_back(params[i], (*ctx->lens)[i]);
        *loss_out = (*ctx->loss_fn)(views);
        return 0;
    } catch (...) {
        if (!ctx->error) ctx->error = std::current_exception();
        return 1;
    }
}

inline std::int32_t grad_trampoline(void* user_data, const float* const* params,
                                    float* const* grads_out, std::size_t n_tensors) noexcept {
    auto* ctx = static_cast<CallbackContext*>(user_data);
    try {
        if (n_tensors != ctx->lens->size())
            throw Error(ALR_SHAPE_MISMATCH, "gradient callback: the library passed " +
                                                std::to_string(n_tensors) + " tensors, registered " +
                                                std::to_string(ctx->lens->size()));
        Views views;
        MutViews outs;
        views.reserve(n_tensors);
        outs.reserve(n_tensors);
        for (std::size_t i = 0; i < n_tensors; ++i) {
            views.emplace_back(params[i], (*ctx->lens)[i]);
            outs.emplace_back(grads_out[i], (*ctx->lens)[i]);
        }
        (*ctx->grad_fn)(views, outs);
        return 0;
    } catch (...) {
        if (!ctx->error) ctx->error = std::current_exception();
        return 1;
    }
}

}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Optimizer
// ---------------------------------------------------------------------------------------------

/// An optimizer over a fixed list of float32 tensors, owning one `AlrOptimizer` handle.
/// Move-only; a moved-from Optimizer holds no handle and throws ALR_WRONG_STATE when used.
/// Do not destroy or assign to an Optimizer from inside one of its own callbacks (a loss or
/// gradient callback its `step` is running): the library refuses to destroy a handle in the
/// middle of its step, so that handle would never be freed.
class Optimizer {
public:
    /// Creates an optimizer for `algorithm` ("adam", "auto-sgd", "gi", …) over tensors of
    /// `lens` elements each (all >= 1). `groups` gives a group id (0..G-1, each used) per
    /// tensor; empty: every tensor is its own group. Options start at their defaults.
    Optimizer(const std::string& algorithm, std::vector<std::size_t> lens,
              const std::vector<std::uint32_t>& groups = {})
        : lens_(std::move(lens)) {
        if (abi_version() != ALR_ABI_VERSION)
            throw Error(ALR_UNSUPPORTED,
                        "autolr: the loaded library has C ABI version " + std::to_string(abi_version()) +
                            " but autolr.hpp was compiled against version " +
                            std::to_string(ALR_ABI_VERSION) + "; rebuild against the matching header");
        if (!groups.empty() && groups.size() != lens_.size())
            throw Error(ALR_SHAPE_MISMATCH, "groups has " + std::to_string(groups.size()) +
                                                " ids for " + std::to_string(lens_.size()) + " tensors");
        AlrCreateArgs args{};
        args.struct_size = sizeof(AlrCreateArgs);
        args.algorithm = algorithm.c_str();
        args.n_tensors = lens_.size();
        args.lens = lens_.data();
        args.groups = groups.empty() ? nullptr : groups.data();
        args.device = ALR_DEVICE_CPU;
        args.device_ordinal = 0;
        args.stream = nullptr;
        AlrOptimizer* handle = nullptr;
        detail::check(alr_create(&args, &handle));
        handle_ = handle;
    }

    ~Optimizer() { reset(); }

    Optimizer(const Optimizer&) = delete;
    Optimizer& operator=(const Optimizer&) = delete;

    Optimizer(Optimizer&& other) noexcept
        : handle_(std::exchange(other.handle_, nullptr)), lens_(std::move(other.lens_)) {
        other.lens_.clear();
    }

    Optimizer& operator=(Optimizer&& other) noexcept {
        if (this != &other) {
            reset();
            handle_ = std::exchange(other.handle_, nullptr);
            lens_ = std::move(other.lens_);
            other.lens_.clear();
        }
        return *this;
    }

    /// The C handle (nullptr after a move), for calling the C API directly. Still owned here.
    AlrOptimizer* raw() const noexcept { return handle_; }

    /// True while this object owns a handle.
    explicit operator bool() const noexcept { return handle_ != nullptr; }

    /// The registered tensor lengths.
    const std::vector<std::size_t>& lens() const noexcept { return lens_; }

    // -- options -------------------------------------------------------------------------------

    /// Sets a numeric or flag option (bool → 0/1) for every group.
    template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
    void set_option(const std::string& name, T value) {
        detail::check(alr_set_option(handle(), name.c_str(), static_cast<double>(value)));
    }

    /// Sets a string option (GI's and schedule-free's "base"; schedule-free over gi's
    /// "base_base", after "base"); set it before the wrapped algorithms' options.
    void set_option(const std::string& name, const std::string& value) {
        detail::check(alr_set_option_str(handle(), name.c_str(), value.c_str()));
    }
    void set_option(const std::string& name, const char* value) {
        set_option(name, std::string(value != nullptr ? value : ""));
    }

    /// Sets a numeric or flag option for one group only (like a torch param_group).
    template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
    void set_group_option(std::size_t group, const std::string& name, T value) {
        detail::check(alr_set_group_option(handle(), group, name.c_str(), static_cast<double>(value)));
    }

    /// Reads a numeric option of `group` (NaN for an unset optional value).
    double get_option(const std::string& name, std::size_t group = 0) const {
        double value = 0.0;
        detail::check(alr_get_option(handle(), group, name.c_str(), &value));
        return value;
    }

    // -- the step ------------------------------------------------------------------------------

    /// One step: updates `params` in place from the mean minibatch `grads` (and `in`).
    /// Every view must have its tensor's registered length (per_sample: batch_size × length).
    void step(const MutViews& params, const Views& grads, const StepInputs& in = {}) {
        AlrOptimizer* h = handle();
        const std::size_t n = lens_.size();
        check_views(params, "params", 1);
        check_views(grads, "grads", 1);
        if (!in.sum_sq.empty() && !in.per_sample.empty())
            throw Error(ALR_INVALID_ARGUMENT, "give either sum_sq or per_sample, not both");
        if ((!in.sum_sq.empty() || !in.per_sample.empty()) && in.batch_size == 0)
            throw Error(ALR_INVALID_ARGUMENT,
                        "per-sample data (sum_sq or per_sample) needs batch_size, the number of samples N");
        if (!in.sum_sq.empty()) check_views(in.sum_sq, "sum_sq", 1);
        if (!in.per_sample.empty()) check_views(in.per_sample, "per_sample", in.batch_size);
        if (!in.curvature.empty()) check_views(in.curvature, "curvature", 1);

        std::vector<float*> param_ptrs(n);
        std::vector<const float*> grad_ptrs(n), sum_sq_ptrs, per_sample_ptrs, curvature_ptrs;
        for (std::size_t i = 0; i < n; ++i) {
            param_ptrs[i] = params[i].data();
            grad_ptrs[i] = grads[i].data();
        }
        auto pointers = [](const Views& views, std::vector<const float*>& out) -> const float* const* {
            if (views.empty()) return nullptr;
            out.reserve(views.size());
            for (const auto& v : views) out.push_back(v.data());
            return out.data();
        };

        AlrStepArgs args{};
        args.struct_size = sizeof(AlrStepArgs);
        args.n_tensors = n;
        args.params = param_ptrs.data();
        args.grads = grad_ptrs.data();
        args.sum_sq = pointers(in.sum_sq, sum_sq_ptrs);
        args.per_sample = pointers(in.per_sample, per_sample_ptrs);
        args.per_sample_scale = static_cast<AlrSampleScale>(in.per_sample_scale);
        args.batch_size = in.batch_size;
        args.curvature = pointers(in.curvature, curvature_ptrs);
        args.has_loss = in.loss.has_value() ? 1 : 0;
        args.loss = in.loss.value_or(0.0);

        detail::CallbackContext ctx;
        ctx.lens = &lens_;
        if (in.loss_fn) {
            ctx.loss_fn = &in.loss_fn;
            args.loss_fn = &detail::loss_trampoline;
        }
        if (in.grad_fn) {
            ctx.grad_fn = &in.grad_fn;
            args.grad_fn = &detail::grad_trampoline;
        }
        args.user_data = &ctx;

        const AlrStatus status = alr_step(h, &args);
        if (ctx.error) {
            const std::string message = std::string(alr_last_error()) + " (" + detail::describe(ctx.error) + ")";
            const AlrStatus code = status == ALR_OK ? ALR_CALLBACK_FAILED : status;
            try {
                std::rethrow_exception(ctx.error);
            } catch (...) {
                std::throw_with_nested(Error(code, message));
            }
        }
        detail::check(status);
    }

    /// Switches `params` (the buffers `step` updates) in place to the training view (`train`:
    /// schedule-free's y, where gradients are taken) or the evaluation view (its average x);
    /// a no-op for every other algorithm. Schedule-free throws ALR_WRONG_STATE for the mode it
    /// is already in (except train before the first step), and its `step` in eval mode.
    void set_mode(const MutViews& params, bool train) {
        check_views(params, "params", 1);
        std::vector<float*> ptrs(params.size());
        for (std::size_t i = 0; i < params.size(); ++i) ptrs[i] = params[i].data();
        AlrModeArgs args{};
        args.struct_size = sizeof(AlrModeArgs);
        args.mode = train ? ALR_MODE_TRAIN : ALR_MODE_EVAL;
        args.n_tensors = ptrs.size();
        args.params = ptrs.data();
        detail::check(alr_set_mode(handle(), &args));
    }
    void train(const MutViews& params) { set_mode(params, true); }
    void eval(const MutViews& params) { set_mode(params, false); }

    /// GI's second phase: the loss on the same batch at the parameters the last `step`
    /// produced (when that step had no loss callback).
    void report_loss(double loss_after) { detail::check(alr_report_loss(handle(), loss_after)); }

    // -- read-back -----------------------------------------------------------------------------

    /// The number of groups.
    std::size_t n_groups() const {
        std::size_t out = 0;
        detail::check(alr_n_groups(handle(), &out));
        return out;
    }

    /// The effective learning rate of `group` after the last step.
    double lr(std::size_t group) const {
        double out = 0.0;
        detail::check(alr_get_lr(handle(), group, &out));
        return out;
    }

    /// The effective learning rate of every group.
    std::vector<double> lr() const { return per_group(&Optimizer::lr); }

    /// The momentum of `group` (AutoOpt's adapted β; the fixed value for momentum bases; 0 if none).
    double momentum(std::size_t group) const {
        double out = 0.0;
        detail::check(alr_get_momentum(handle(), group, &out));
        return out;
    }

    /// The momentum of every group.
    std::vector<double> momentum() const { return per_group(&Optimizer::momentum); }

    /// The algorithm's internal scalars for `group` (docs/algorithms.md §5), in the library's order.
    std::vector<std::pair<std::string, double>> telemetry(std::size_t group = 0) const {
        std::size_t count = 0;
        detail::check(alr_telemetry_count(handle(), group, &count));
        std::vector<std::pair<std::string, double>> out;
        out.reserve(count);
        for (std::size_t i = 0; i < count; ++i) {
            const char* name = nullptr;
            double value = 0.0;
            detail::check(alr_telemetry_entry(handle(), group, i, &name, &value));
            out.emplace_back(name != nullptr ? name : "", value);
        }
        return out;
    }

    // -- checkpoints ---------------------------------------------------------------------------

    /// The whole optimizer state (options, buffers, counters), versioned and checksummed.
    std::vector<std::uint8_t> save() const {
        std::size_t size = 0;
        detail::check(alr_save_size(handle(), &size));
        std::vector<std::uint8_t> buf(size);
        std::size_t written = 0;
        detail::check(alr_save(handle(), buf.data(), buf.size(), &written));
        buf.resize(written);
        return buf;
    }

    /// Restores bytes from `save()` (same algorithm, tensors and groups); on failure
    /// (ALR_BAD_CHECKPOINT) the optimizer is unchanged.
    void load(span<const std::uint8_t> bytes) {
        static const std::uint8_t empty = 0;
        detail::check(alr_load(handle(), bytes.empty() ? &empty : bytes.data(), bytes.size()));
    }
    void load(const std::vector<std::uint8_t>& bytes) { load(span<const std::uint8_t>(bytes.data(), bytes.size())); }

private:
    AlrOptimizer* handle() const {
        if (handle_ == nullptr)
            throw Error(ALR_WRONG_STATE, "autolr::Optimizer: this object was moved from and holds no optimizer");
        return handle_;
    }

    void reset() noexcept {
        if (handle_ != nullptr) {
            // Refused only for a handle in the middle of its own step (destroying or assigning
            // an Optimizer from inside one of its callbacks, which the class documents as not
            // allowed): the handle is then left to the library, not freed.
            alr_destroy(handle_);
            handle_ = nullptr;
        }
    }

    template <typename V>
    void check_views(const std::vector<span<V>>& views, const char* what, std::size_t rows) const {
        handle();  // a moved-from object says so before any argument check
        if (views.size() != lens_.size())
            throw Error(ALR_SHAPE_MISMATCH, std::string(what) + " has " + std::to_string(views.size()) +
                                                " tensors, the optimizer has " + std::to_string(lens_.size()));
        for (std::size_t i = 0; i < views.size(); ++i) {
            const std::size_t want = lens_[i] * rows;
            if (views[i].data() == nullptr)
                throw Error(ALR_NULL_POINTER, "tensor " + std::to_string(i) + ": " + what + " is null");
            if (views[i].size() != want)
                throw Error(ALR_SHAPE_MISMATCH,
                            "tensor " + std::to_string(i) + ": " + what + " has " +
                                std::to_string(views[i].size()) + " elements, expected " + std::to_string(want) +
                                (rows == 1 ? std::string(" (registered length)")
                                           : " (batch_size " + std::to_string(rows) + " × registered length " +
                                                 std::to_string(lens_[i]) + ")"));
        }
    }

    std::vector<double> per_group(double (Optimizer::*get)(std::size_t) const) const {
        const std::size_t g = n_groups();
        std::vector<double> out(g);
        for (std::size_t i = 0; i < g; ++i) out[i] = (this->*get)(i);
        return out;
    }

    AlrOptimizer* handle_ = nullptr;
    std::vector<std::size_t> lens_;
};

}  // namespace autolr

#endif  // AUTOLR_HPP
