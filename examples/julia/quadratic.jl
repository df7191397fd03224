# A noisy quadratic trained through the Julia binding: every minibatch of N samples has loss
#     f(θ) = (1/N) Σ_i ½ Σ_j h_j (θ_j − c_ij)²,   c_ij ~ Normal(0, σ²),
# so the per-sample gradient is g_i = h ⊙ (θ − c_i), and Σ_i g_i² is available exactly.
# Runs 'adam' (fixed rate), 'auto-sgd' (per-sample statistics: sum_sq) and 'gi' over sgd (loss
# before the step, a closure for the loss after), printing loss and learning rate; then shows a
# checkpoint round trip and an error message.
#
#     cargo build --release
#     julia examples/julia/quadratic.jl            # or AUTOLR_LIB=/path/to/libautolr.so julia ...

include(joinpath(@__DIR__, "..", "..", "bindings", "julia", "AutoLR.jl"))
using .AutoLR
using Random

const DIM = (20, 5)                       # one matrix-shaped tensor …
const H = [Float32(0.1 + 2.0 * (i - 1) / (prod(DIM) - 1)) for i in 1:prod(DIM)]  # curvatures
const HB = Float32[0.5, 1.0, 3.0]         # … and one vector
const N = 32
const SIGMA = 0.3f0

"""A minibatch: centers for both tensors, sample index last."""
batch(rng) = (SIGMA .* randn(rng, Float32, DIM..., N), SIGMA .* randn(rng, Float32, length(HB), N))

function loss(params, centers)
    W, b = params
    CW, Cb = centers
    total = 0.0
    for i in 1:N
        total += 0.5 * sum(reshape(H, DIM) .* (W .- CW[:, :, i]) .^ 2) + 0.5 * sum(HB .* (b .- Cb[:, i]) .^ 2)
    end
    return total / N
end

"""Mean gradient and Σ_i g_i² per tensor."""
function grads_and_sum_sq(params, centers)
    W, b = params
    CW, Cb = centers
    gW = zeros(Float32, DIM); gb = zeros(Float32, length(HB))
    sW = zeros(Float32, DIM); sb = zeros(Float32, length(HB))
    for i in 1:N
        giW = reshape(H, DIM) .* (W .- CW[:, :, i])
        gib = HB .* (b .- Cb[:, i])
        gW .+= giW ./ N; gb .+= gib ./ N
        sW .+= giW .^ 2; sb .+= gib .^ 2
    end
    return [gW, gb], [sW, sb]
end

function train(algorithm; steps=200, options...)
    rng = MersenneTwister(42)
    params = [ones(Float32, DIM), fill(2.0f0, length(HB))]
    opt = Optimizer(algorithm, params; groups=[1, 1], options...)
    for t in 1:steps
        centers = batch(rng)
        g, s = grads_and_sum_sq(params, centers)
        if startswith(algorithm, "auto-")
            step!(opt, g; sum_sq=s, batch_size=N)
        elseif algorithm == "gi"
            step!(opt, g; loss=loss(params, centers), closure=() -> loss(params, centers))
        else
            step!(opt, g)
        end
        if t % 50 == 0
            println(rpad(algorithm, 9), " step ", lpad(t, 4), "  loss ", round(loss(params, centers); digits=5),
                    "  lr ", round(lr(opt)[1]; sigdigits=4), "  momentum ", round(momentum(opt)[1]; sigdigits=3))
        end
    end
    return opt, params
end

println("AutoLR ", AutoLR.version(), " (ABI ", AutoLR.abi_version(), ")")
train("auto")  # the default (docs/results/suite.md): no learning rate to set
train("adam"; lr=1e-2)
train("auto-sgd")
opt, params = train("gi"; base="sgd", lr=0.05)
println("gi telemetry: ", telemetry(opt))

# A checkpoint restores the state exactly.
bytes = state_dict(opt)
restored = Optimizer("gi", [copy(p) for p in params]; groups=[1, 1], base="sgd")
load_state_dict!(restored, bytes)
@assert state_dict(restored) == bytes
println("checkpoint: ", length(bytes), " bytes, restored")

# Errors carry the library's message.
try
    Optimizer("adam", params; no_such_option=1.0)
catch e
    e isa AutoLRError || rethrow()
    println("expected error: ", sprint(showerror, e))
end
