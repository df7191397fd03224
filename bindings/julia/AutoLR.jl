"""
    AutoLR

Julia binding of autolr: learning rates (and momentum) that set themselves. A thin layer over
the C ABI (include/autolr.h) whose low-level `@ccall` declarations are generated into
`generated.jl` by scripts/gen_bindings.py. It mirrors the Python API (DESIGN.md):

```julia
include("bindings/julia/AutoLR.jl"); using .AutoLR
params = [zeros(Float32, 784, 120), zeros(Float32, 120)]   # updated in place by step!
opt = Optimizer("auto-sgd", params; nu=0.9)                 # options by name
step!(opt, grads; sum_sq=S, batch_size=N)                   # S: Σ_i g_i² per tensor
lr(opt); momentum(opt); telemetry(opt)
bytes = state_dict(opt); load_state_dict!(opt, bytes)
eval!(opt); train!(opt)                                     # schedule-free: x to evaluate, y to train
```

The library is found through `ENV["AUTOLR_LIB"]` (a path to `libautolr.so`), else the
repository's `target/release` build next to this file, else `libautolr` on the system's library
search path. Conventions particular to Julia:

* Groups are numbered from 1: `groups = [1, 1, 2]`, `lr(opt)[g]`, `set_option!(...; group=g)`.
* Tensors are flat to the library, so Julia's column-major layout needs no care, except for
  per-sample gradients: give them with the sample index *last*, size `(size(p)..., N)`, so that
  each sample's gradient is contiguous — the memory layout of the C API's row-major N × len.
* Parameters must be `Array{Float32}` (updated in place). Other inputs may be any real arrays of
  the right size; they are converted to `Float32` (a copy) when they are not `Array{Float32}`.
* Failures throw `AutoLRError` with the library's message; a callback that throws makes `step!`
  throw `AutoLRError` with status `ALR_CALLBACK_FAILED`, the original exception in `cause`.
  No Julia exception ever unwinds through the library.
"""
module AutoLR

export Optimizer, AutoLRError, step!, report_loss!, lr, momentum, telemetry, state_dict,
       load_state_dict!, set_option!, get_option, n_groups, eval!, train!, ALGORITHMS

function _find_library()
    haskey(ENV, "AUTOLR_LIB") && return ENV["AUTOLR_LIB"]
    name = Sys.isapple() ? "libautolr.dylib" : Sys.iswindows() ? "autolr.dll" : "libautolr.so"
    built = normpath(joinpath(@__DIR__, "..", "..", "target", "release", name))
    return isfile(built) ? built : "libautolr"
end

# generated.jl's @ccall declarations name this constant.
const libautolr = _find_library()

include("generated.jl")

"""The algorithm names the library accepts on the CPU, in its order (`alr_algorithms`)."""
const ALGORITHMS = Tuple(String.(split(unsafe_string(alr_algorithms(ALR_DEVICE_CPU)), ",")))

"""The library's version string ("MAJOR.MINOR.PATCH")."""
version() = unsafe_string(alr_version())

"""The library's C ABI version."""
abi_version() = Int(alr_abi_version())

# -- errors -------------------------------------------------------------------------------------

"""
    AutoLRError(status, status_name, msg, cause=nothing)

A failure reported by the library (or by this binding's checks of its arguments). `status` is
the C status code (`ALR_SHAPE_MISMATCH`, …), `status_name` its name, `msg` the explanation;
`cause` holds the exception a callback threw (for `ALR_CALLBACK_FAILED`).
"""
struct AutoLRError <: Exception
    status::Cint
    status_name::String
    msg::String
    cause::Any
end
AutoLRError(status::Integer, msg::AbstractString) =
    AutoLRError(Cint(status), unsafe_string(alr_status_name(Cint(status))), String(msg), nothing)

function Base.showerror(io::IO, e::AutoLRError)
    print(io, "AutoLRError(", e.status_name, "): ", e.msg)
    if e.cause !== nothing
        print(io, "\ncaused by: ")
        showerror(io, e.cause)
    end
end

# Throws the library's last error for a failed call. Called right after the ccall, with no
# yield point in between, so the task is still on the thread whose last-error text it reads.
function _check(rc::Cint)
    rc == ALR_OK && return nothing
    msg = unsafe_string(alr_last_error())
    throw(AutoLRError(rc, isempty(msg) ? unsafe_string(alr_status_name(rc)) : msg))
end

# -- the optimizer ------------------------------------------------------------------------------

"""
    Optimizer(algorithm, params; groups=nothing, options...)

An optimizer over `params`, a vector of `Array{Float32}` updated in place by [`step!`](@ref).
`groups` gives a group number (1…G, each used) per tensor; by default every tensor is its own
group. Options by name (docs/algorithms.md), e.g. `lr=1e-3`, `nu=0.9`, `nesterov=true`; for `"gi"`
pass `base="adam"` (set before the other options). Free it early with `close(opt)`; otherwise
a finalizer does.
"""
mutable struct Optimizer
    handle::Ptr{Cvoid}
    algorithm::String
    params::Vector{Array{Float32}}

    function Optimizer(algorithm::AbstractString, params::AbstractVector; groups=nothing, options...)
        isempty(params) && throw(AutoLRError(ALR_INVALID_ARGUMENT, "params is empty: give at least one tensor"))
        ps = Array{Float32}[]
        for (i, p) in enumerate(params)
            p isa Array{Float32} || throw(AutoLRError(ALR_INVALID_ARGUMENT,
                "params[$i] is a $(typeof(p)); parameters must be Array{Float32} (they are updated in place)"))
            push!(ps, p)
        end
        n = length(ps)
        lens = Csize_t[length(p) for p in ps]
        ids = UInt32[]
        if groups !== nothing
            length(groups) == n || throw(AutoLRError(ALR_SHAPE_MISMATCH, "groups has $(length(groups)) ids for $n tensors"))
            for (i, g) in enumerate(groups)
                (g isa Integer && g >= 1) || throw(AutoLRError(ALR_INVALID_ARGUMENT,
                    "groups[$i] is $g; group numbers start at 1"))
                push!(ids, UInt32(g - 1))
            end
        end
        name = String(algorithm)
        handle = Ref{Ptr{Cvoid}}(C_NULL)
        GC.@preserve name lens ids begin
            args = AlrCreateArgs(sizeof(AlrCreateArgs), pointer(name), n, pointer(lens),
                                 isempty(ids) ? Ptr{UInt32}(C_NULL) : pointer(ids),
                                 ALR_DEVICE_CPU, Int32(0), C_NULL)
            _check(alr_create(Ref(args), handle))
        end
        opt = new(handle[], name, ps)
        finalizer(_destroy!, opt)
        # The bases first, outermost first: setting one resets the wrapped algorithms' options to
        # their defaults (base_base: GI's base under schedule-free over gi).
        haskey(options, :base) && set_option!(opt, "base", options[:base])
        haskey(options, :base_base) && set_option!(opt, "base_base", options[:base_base])
        for (k, v) in pairs(options)
            k in (:base, :base_base) || set_option!(opt, String(k), v)
        end
        return opt
    end
end

function _destroy!(opt::Optimizer)
    if opt.handle != C_NULL
        alr_destroy(opt.handle)
        opt.handle = C_NULL
    end
    return nothing
end

"""Frees the library's optimizer now; the object cannot be used afterwards."""
Base.close(opt::Optimizer) = _destroy!(opt)

function _handle(opt::Optimizer)
    opt.handle == C_NULL && throw(AutoLRError(ALR_WRONG_STATE, "this Optimizer was closed"))
    return opt.handle
end

Base.show(io::IO, opt::Optimizer) =
    print(io, "AutoLR.Optimizer(\"", opt.algorithm, "\", ", length(opt.params), " tensors",
          opt.handle == C_NULL ? ", closed)" : ")")

# -- options ------------------------------------------------------------------------------------

"""
    set_option!(opt, name, value; group=nothing)

Sets option `name` for every group, or for group `group` (1-based). Strings set string options
(GI's and schedule-free's "base", schedule-free over gi's "base_base"); `Bool`s set flags.
"""
function set_option!(opt::Optimizer, name::AbstractString, value; group=nothing)
    h = _handle(opt)
    if value isa AbstractString || value isa Symbol
        group === nothing || throw(AutoLRError(ALR_INVALID_ARGUMENT, "string option '$name' cannot be set per group"))
        _check(alr_set_option_str(h, String(name), String(value)))
    elseif value isa Real
        if group === nothing
            _check(alr_set_option(h, String(name), Float64(value)))
        else
            _check(alr_set_group_option(h, _group(group), String(name), Float64(value)))
        end
    else
        throw(AutoLRError(ALR_INVALID_ARGUMENT, "option '$name' got a $(typeof(value)); options are numbers, Bools or strings"))
    end
    return opt
end

"""Reads option `name` of group `group` (1-based; NaN for an unset optional value)."""
function get_option(opt::Optimizer, name::AbstractString; group::Integer=1)
    out = Ref{Cdouble}(0)
    _check(alr_get_option(_handle(opt), _group(group), String(name), out))
    return out[]
end

function _group(g::Integer)
    g >= 1 || throw(AutoLRError(ALR_INVALID_ARGUMENT, "group $g: groups are numbered from 1"))
    return Csize_t(g - 1)
end

# -- the step -----------------------------------------------------------------------------------

# Everything the callback trampolines need; passed to the library as user_data.
mutable struct _CallbackContext
    closure::Any
    grad_closure::Any
    shapes::Vector{Tuple}
    error::Any
end

# The trampolines are the only Julia code the library calls: they catch everything, record it,
# and return non-zero, so that no exception unwinds through the library's frames.
function _loss_trampoline(user::Ptr{Cvoid}, params::Ptr{Ptr{Cfloat}}, n::Csize_t, out::Ptr{Cdouble})::Int32
    try
        ctx = unsafe_pointer_to_objref(user)::_CallbackContext
        try
            unsafe_store!(out, Float64(ctx.closure()))
            return Int32(0)
        catch e
            ctx.error === nothing && (ctx.error = e)
            return Int32(1)
        end
    catch
        return Int32(1)
    end
end

function _grad_trampoline(user::Ptr{Cvoid}, params::Ptr{Ptr{Cfloat}}, grads_out::Ptr{Ptr{Cfloat}}, n::Csize_t)::Int32
    try
        ctx = unsafe_pointer_to_objref(user)::_CallbackContext
        try
            n == length(ctx.shapes) || error("the library passed $n tensors, registered $(length(ctx.shapes))")
            # Views of the library's buffers (shifted copies of the parameters), valid for this call.
            views = [unsafe_wrap(Array, unsafe_load(params, i), ctx.shapes[i]) for i in 1:n]
            result = ctx.grad_closure(views)
            length(result) == n || throw(AutoLRError(ALR_SHAPE_MISMATCH,
                "grad_closure returned $(length(result)) gradients for $n tensors"))
            for i in 1:n
                out = unsafe_wrap(Array, unsafe_load(grads_out, i), ctx.shapes[i])
                size(result[i]) == size(out) || length(result[i]) == length(out) ||
                    throw(AutoLRError(ALR_SHAPE_MISMATCH, "grad_closure: gradient $i has size $(size(result[i])), expected $(size(out))"))
                copyto!(out, result[i])
            end
            return Int32(0)
        catch e
            ctx.error === nothing && (ctx.error = e)
            return Int32(1)
        end
    catch
        return Int32(1)
    end
end

_f32(x::Array{Float32}) = x
_f32(x::AbstractArray{<:Real}) = Array{Float32}(x)

function _inputs(opt::Optimizer, xs, what::String; samples::Int=0)
    n = length(opt.params)
    length(xs) == n || throw(AutoLRError(ALR_SHAPE_MISMATCH, "$what has $(length(xs)) tensors, the optimizer has $n"))
    out = Array{Float32}[]
    for (i, x) in enumerate(xs)
        x isa AbstractArray{<:Real} || throw(AutoLRError(ALR_INVALID_ARGUMENT, "$what[$i] is a $(typeof(x)), not an array"))
        want = samples == 0 ? size(opt.params[i]) : (size(opt.params[i])..., samples)
        if size(x) != want
            # A flat buffer of the right length is accepted too (the library sees flat tensors).
            length(x) == prod(want) && ndims(x) == 1 ||
                throw(AutoLRError(ALR_SHAPE_MISMATCH, "tensor $i: $what has size $(size(x)), expected $want"))
        end
        push!(out, _f32(x))
    end
    return out
end

_pointers(xs::Vector{Array{Float32}}) = Ptr{Cfloat}[pointer(x) for x in xs]

"""
    step!(opt, grads; sum_sq=nothing, per_sample=nothing, per_sample_scale=:sample,
          batch_size=nothing, curvature=nothing, loss=nothing, closure=nothing,
          grad_closure=nothing)

One step over every tensor: updates the parameters in place from the mean minibatch `grads`.

* `sum_sq`: Σ_i g_i² per tensor (same sizes as the parameters), with `batch_size` N; or
* `per_sample`: per-sample gradients per tensor, size `(size(p)..., N)` (sample index last).
* `per_sample_scale`: `:sample` (entries describe g_i) or `:mean` (g_i/N, BackPACK's convention).
* `curvature`: diagonal curvature per tensor (vSGD).
* `loss`: the loss on this batch at the current parameters (GI); `closure`: `() -> loss` on the
  same batch at the (moved) parameters (GI; without it call [`report_loss!`](@ref)).
* `grad_closure`: `(params) -> grads` on the same batch at `params` (vSGD's finite differences;
  `params` are views of the library's buffers, valid during the call).
"""
function step!(opt::Optimizer, grads::AbstractVector; sum_sq=nothing, per_sample=nothing,
               per_sample_scale::Symbol=:sample, batch_size=nothing, curvature=nothing,
               loss=nothing, closure=nothing, grad_closure=nothing)
    h = _handle(opt)
    n = length(opt.params)
    per_sample_scale in (:sample, :mean) || throw(AutoLRError(ALR_INVALID_ARGUMENT,
        "per_sample_scale is :$per_sample_scale; accepted: :sample (g_i of each sample's own loss) or :mean (g_i/N)"))
    sum_sq !== nothing && per_sample !== nothing &&
        throw(AutoLRError(ALR_INVALID_ARGUMENT, "give either sum_sq or per_sample, not both"))
    g = _inputs(opt, grads, "grads")
    N = batch_size === nothing ? 0 : Int(batch_size)
    N < 0 && throw(AutoLRError(ALR_INVALID_ARGUMENT, "batch_size is $N; it must be the number of samples N >= 1"))
    s = Array{Float32}[]
    ps = Array{Float32}[]
    c = Array{Float32}[]
    if sum_sq !== nothing
        batch_size === nothing && throw(AutoLRError(ALR_INVALID_ARGUMENT, "sum_sq needs batch_size (the number of samples N)"))
        s = _inputs(opt, sum_sq, "sum_sq")
    end
    if per_sample !== nothing
        if batch_size === nothing
            p1 = per_sample[1]
            N = ndims(p1) == ndims(opt.params[1]) + 1 ? size(p1, ndims(p1)) : 0
        end
        ps = _inputs(opt, per_sample, "per_sample"; samples=N)
    end
    if curvature !== nothing
        c = _inputs(opt, curvature, "curvature")
    end
    param_ptrs = _pointers(opt.params)
    grad_ptrs = _pointers(g)
    sum_sq_ptrs = _pointers(s)
    per_sample_ptrs = _pointers(ps)
    curvature_ptrs = _pointers(c)
    ctx = _CallbackContext(closure, grad_closure, Tuple[size(p) for p in opt.params], nothing)
    loss_fn = closure === nothing ? C_NULL :
        @cfunction(_loss_trampoline, Int32, (Ptr{Cvoid}, Ptr{Ptr{Cfloat}}, Csize_t, Ptr{Cdouble}))
    grad_fn = grad_closure === nothing ? C_NULL :
        @cfunction(_grad_trampoline, Int32, (Ptr{Cvoid}, Ptr{Ptr{Cfloat}}, Ptr{Ptr{Cfloat}}, Csize_t))
    nullp = Ptr{Ptr{Cfloat}}(C_NULL)
    rc = GC.@preserve opt g s ps c param_ptrs grad_ptrs sum_sq_ptrs per_sample_ptrs curvature_ptrs ctx begin
        args = AlrStepArgs(
            sizeof(AlrStepArgs), n,
            pointer(param_ptrs), pointer(grad_ptrs),
            isempty(s) ? nullp : pointer(sum_sq_ptrs),
            isempty(ps) ? nullp : pointer(per_sample_ptrs),
            per_sample_scale === :sample ? ALR_SCALE_SAMPLE : ALR_SCALE_MEAN,
            N,
            isempty(c) ? nullp : pointer(curvature_ptrs),
            Int32(loss === nothing ? 0 : 1), loss === nothing ? 0.0 : Float64(loss),
            loss_fn, grad_fn, pointer_from_objref(ctx))
        alr_step(h, Ref(args))
    end
    if ctx.error !== nothing
        msg = unsafe_string(alr_last_error())
        status = rc == ALR_OK ? ALR_CALLBACK_FAILED : rc
        err = ctx.error
        throw(AutoLRError(status, unsafe_string(alr_status_name(status)),
                          "$msg ($(sprint(showerror, err)))", err))
    end
    _check(rc)
    return opt
end

"""GI's second phase: the loss on the same batch after the last `step!` moved the parameters."""
function report_loss!(opt::Optimizer, loss_after::Real)
    _check(alr_report_loss(_handle(opt), Float64(loss_after)))
    return opt
end

# -- the two parameter views (schedule-free) ------------------------------------------------------

function _set_mode!(opt::Optimizer, mode::Cint)
    h = _handle(opt)
    ptrs = _pointers(opt.params)
    GC.@preserve opt ptrs begin
        args = AlrModeArgs(sizeof(AlrModeArgs), mode, length(opt.params), pointer(ptrs))
        _check(alr_set_mode(h, Ref(args)))
    end
    return opt
end

"""
    eval!(opt)

Rewrites the parameters in place to the evaluation view: schedule-free's average x (as the
reference's `optimizer.eval()`); a no-op for every other algorithm. Schedule-free throws
`ALR_WRONG_STATE` when already in eval mode, and refuses `step!` until [`train!`](@ref).
"""
eval!(opt::Optimizer) = _set_mode!(opt, ALR_MODE_EVAL)

"""
    train!(opt)

Rewrites the parameters back to the training view (schedule-free's y, where gradients are
taken); a no-op for every other algorithm.
"""
train!(opt::Optimizer) = _set_mode!(opt, ALR_MODE_TRAIN)

# -- read-back ----------------------------------------------------------------------------------

"""The number of groups."""
function n_groups(opt::Optimizer)
    out = Ref{Csize_t}(0)
    _check(alr_n_groups(_handle(opt), out))
    return Int(out[])
end

function _per_group(f, opt::Optimizer)
    h = _handle(opt)
    out = Ref{Cdouble}(0)
    return [(_check(f(h, Csize_t(g), out)); out[]) for g in 0:n_groups(opt)-1]
end

"""Effective learning rate per group (index = group number) after the last step."""
lr(opt::Optimizer) = _per_group(alr_get_lr, opt)

"""Momentum per group (AutoOpt's adapted value; the fixed value for momentum bases; 0 if none)."""
momentum(opt::Optimizer) = _per_group(alr_get_momentum, opt)

"""`Dict(name => [value per group])` of the algorithm's internal scalars (docs/algorithms.md §5)."""
function telemetry(opt::Optimizer)
    h = _handle(opt)
    result = Dict{String,Vector{Float64}}()
    count = Ref{Csize_t}(0)
    name = Ref{Ptr{Cchar}}(C_NULL)
    value = Ref{Cdouble}(0)
    for g in 0:n_groups(opt)-1
        _check(alr_telemetry_count(h, Csize_t(g), count))
        for i in 0:Int(count[])-1
            _check(alr_telemetry_entry(h, Csize_t(g), Csize_t(i), name, value))
            push!(get!(result, unsafe_string(name[]), Float64[]), value[])
        end
    end
    return result
end

# -- checkpoints --------------------------------------------------------------------------------

"""The whole optimizer state as bytes (versioned, checksummed)."""
function state_dict(opt::Optimizer)
    h = _handle(opt)
    nbytes = Ref{Csize_t}(0)
    _check(alr_save_size(h, nbytes))
    buf = Vector{UInt8}(undef, nbytes[])
    written = Ref{Csize_t}(0)
    GC.@preserve buf _check(alr_save(h, pointer(buf), length(buf), written))
    return resize!(buf, written[])
end

"""Restores bytes from [`state_dict`](@ref); on error the optimizer is unchanged."""
function load_state_dict!(opt::Optimizer, bytes::AbstractVector{UInt8})
    data = Vector{UInt8}(bytes)
    isempty(data) && push!(data, 0x00) # a valid pointer; the length passed below stays 0
    len = length(bytes)
    GC.@preserve data _check(alr_load(_handle(opt), pointer(data), len))
    return opt
end

end # module
