//! Dense tanh networks with hand-written backward passes that return, besides
//! the mean minibatch gradient, the quantities that curvature- and
//! noise-aware optimizers need:
//!
//! * the sum of squared per-sample gradients `S = Σ_i g_i ⊙ g_i`, where `g_i`
//!   is the gradient of sample i's own loss (so the gradient variance is
//!   `S/N − g⊙g` with `g` the mean gradient), and
//! * the diagonal of the generalised Gauss–Newton matrix of the mean loss,
//!   computed exactly as BackPACK's `DiagGGN` does.
//!
//! Neither is built from materialised per-sample gradients: both come out of
//! one matrix product per weight tensor (see [`Network::backward`]).
//!
//! Parameters are exposed as flat row-major tensors in the order
//! `[W1, b1, W2, b2, ...]`, with `W` of shape `(out, in)` as in PyTorch's
//! `nn.Linear`, so an optimizer can update the buffers in place.
//!
//! The network is generic over the float type: the benchmark uses `f32`
//! ([`Model`]); the tests use `f64` so that finite differences can check the
//! derivatives to many digits.

use std::fmt::{Debug, Display};
use std::ops::{AddAssign, DivAssign, MulAssign, Neg, SubAssign};

use ndarray::{Array1, Array2, ArrayView2, Axis, LinalgScalar, ScalarOperand, Zip};

use crate::data::{SplitMix64, CLASSES, FEATURES};

/// The float types a network can compute in (`f32` and `f64`).
pub trait Real:
    LinalgScalar + ScalarOperand + Debug + Display + PartialOrd + AddAssign + SubAssign + MulAssign + DivAssign + Neg<Output = Self> + Send + Sync
{
    fn from_f64(value: f64) -> Self;
    fn to_f64(self) -> f64;
    fn tanh(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
}

macro_rules! impl_real {
    ($t:ty) => {
        impl Real for $t {
            fn from_f64(value: f64) -> Self {
                value as $t
            }
            fn to_f64(self) -> f64 {
                self as f64
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
        }
    };
}
impl_real!(f32);
impl_real!(f64);

/// A fully connected layer `z = a Wᵀ + b`.
#[derive(Clone, Debug)]
pub struct Dense<T> {
    /// Shape (out, in), standard (row-major) layout: `params()` relies on it.
    weight: Array2<T>,
    bias: Array1<T>,
}

impl<T: Real> Dense<T> {
    /// PyTorch's `nn.Linear` default: weight and bias uniform in
    /// ±1/sqrt(fan_in). Draws in f64 so f32 and f64 networks built from the
    /// same seed hold the same values up to rounding.
    pub fn new(fan_in: usize, fan_out: usize, rng: &mut SplitMix64) -> Self {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let mut draw = || T::from_f64(rng.uniform(-bound, bound));
        let weight = Array2::from_shape_simple_fn((fan_out, fan_in), &mut draw);
        let bias = Array1::from_shape_simple_fn(fan_out, &mut draw);
        Self { weight, bias }
    }

    pub fn fan_in(&self) -> usize {
        self.weight.ncols()
    }

    pub fn fan_out(&self) -> usize {
        self.weight.nrows()
    }

    /// Pre-activations for a batch of inputs (N × in → N × out).
    pub fn forward(&self, input: ArrayView2<'_, T>) -> Array2<T> {
        input.dot(&self.weight.t()) + &self.bias
    }
}

/// Which extra quantities [`Network::backward`] computes. The mean gradient
/// is always computed; each extra costs roughly one more matrix product per
/// weight tensor (plus, for the GGN, a backward pass of `CLASSES` columns
/// through the layers above, which is cheap for narrow layers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// `Σ_i g_i ⊙ g_i` over the per-sample gradients of each sample's own loss.
    pub sum_sq_grads: bool,
    /// Diagonal of the generalised Gauss–Newton matrix of the mean loss.
    pub ggn_diag: bool,
}

impl Want {
    pub const GRAD: Want = Want { sum_sq_grads: false, ggn_diag: false };
    pub const WITH_SUM_SQ_GRADS: Want = Want { sum_sq_grads: true, ggn_diag: false };
    pub const WITH_GGN_DIAG: Want = Want { sum_sq_grads: false, ggn_diag: true };
    pub const ALL: Want = Want { sum_sq_grads: true, ggn_diag: true };
}

/// What one backward pass over a minibatch returns. Every per-tensor list
/// follows the parameter order of [`Network::params`] and each flat tensor
/// has the same length and layout as the parameter it belongs to.
#[derive(Clone, Debug)]
pub struct Batch<T = f32> {
    /// Number of samples N in the minibatch.
    pub batch_size: usize,
    /// Mean cross-entropy at the parameters the gradient was taken at.
    pub loss: f64,
    /// Samples whose arg-max logit was the label.
    pub correct: usize,
    /// Gradient of the mean loss.
    pub grads: Vec<Vec<T>>,
    /// `Σ_i g_i ⊙ g_i`, g_i the gradient of sample i's own (undivided) loss;
    /// present when asked for.
    pub sum_sq_grads: Option<Vec<Vec<T>>>,
    /// Diagonal of the GGN of the mean loss; present when asked for.
    pub ggn_diag: Option<Vec<Vec<T>>>,
}

/// Loss and accuracy over a whole data set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Evaluation {
    pub loss: f64,
    pub accuracy: f64,
}

/// A stack of dense layers with tanh between them and softmax cross-entropy
/// on the final logits. One layer is multinomial logistic regression.
#[derive(Clone, Debug)]
pub struct Network<T> {
    layers: Vec<Dense<T>>,
}

/// The single-precision network the benchmark trains.
pub type Model = Network<f32>;

/// Rows per chunk in [`Network::evaluate`], so evaluating 60k images does not
/// hold every hidden activation at once.
const EVAL_CHUNK: usize = 4096;

impl<T: Real> Network<T> {
    /// A network with the given widths, e.g. `[784, 120, 10]`: one dense
    /// layer per consecutive pair, tanh after every layer but the last.
    pub fn new(layer_sizes: &[usize], seed: u64) -> Self {
        assert!(layer_sizes.len() >= 2, "need at least input and output widths");
        assert!(layer_sizes.iter().all(|&w| w > 0), "layer widths must be positive");
        let mut rng = SplitMix64::new(seed);
        let layers = layer_sizes.windows(2).map(|w| Dense::new(w[0], w[1], &mut rng)).collect();
        Self { layers }
    }

    /// Multinomial logistic regression 784 → 10.
    pub fn logistic_regression(seed: u64) -> Self {
        Self::new(&[FEATURES, CLASSES], seed)
    }

    /// MLP 784 → 120 (tanh) → 10.
    pub fn mlp(seed: u64) -> Self {
        Self::new(&[FEATURES, 120, CLASSES], seed)
    }

    /// E.g. "logistic regression 784-10" or "MLP 784-120-10 (tanh)".
    pub fn name(&self) -> String {
        let widths: Vec<String> = self.layer_sizes().iter().map(|w| w.to_string()).collect();
        if self.layers.len() == 1 {
            format!("logistic regression {}", widths.join("-"))
        } else {
            format!("MLP {} (tanh)", widths.join("-"))
        }
    }

    /// Input width followed by every layer's output width.
    pub fn layer_sizes(&self) -> Vec<usize> {
        std::iter::once(self.layers[0].fan_in()).chain(self.layers.iter().map(Dense::fan_out)).collect()
    }

    /// Shapes in parameter order: `[out, in]` for weights, `[out]` for biases.
    pub fn param_shapes(&self) -> Vec<Vec<usize>> {
        self.layers.iter().flat_map(|l| [vec![l.fan_out(), l.fan_in()], vec![l.fan_out()]]).collect()
    }

    /// Names in parameter order, torch style: "0.weight", "0.bias", ...
    pub fn param_names(&self) -> Vec<String> {
        (0..self.layers.len()).flat_map(|i| [format!("{i}.weight"), format!("{i}.bias")]).collect()
    }

    pub fn num_params(&self) -> usize {
        self.layers.iter().map(|l| l.weight.len() + l.bias.len()).sum()
    }

    /// Flat parameter tensors `[W1, b1, W2, b2, ...]`, W row-major (out, in).
    pub fn params(&self) -> Vec<&[T]> {
        self.layers
            .iter()
            .flat_map(|l| [l.weight.as_slice().expect("weights are kept in standard layout"), l.bias.as_slice().expect("biases are contiguous")])
            .collect()
    }

    /// Mutable flat parameter tensors, same order and layout as [`Self::params`].
    pub fn params_mut(&mut self) -> Vec<&mut [T]> {
        self.layers
            .iter_mut()
            .flat_map(|l| [l.weight.as_slice_mut().expect("weights are kept in standard layout"), l.bias.as_slice_mut().expect("biases are contiguous")])
            .collect()
    }

    /// Forward pass keeping what backward needs: the tanh outputs of every
    /// hidden layer (in order) and the final logits.
    fn forward_with_hidden(&self, x: ArrayView2<'_, T>) -> (Vec<Array2<T>>, Array2<T>) {
        assert_eq!(x.ncols(), self.layers[0].fan_in(), "input width does not match the first layer");
        let (last, hidden_layers) = self.layers.split_last().expect("at least one layer");
        let mut hidden: Vec<Array2<T>> = Vec::with_capacity(hidden_layers.len());
        for layer in hidden_layers {
            let input = hidden.last().map_or(x.view(), |a| a.view());
            let mut activation = layer.forward(input);
            activation.mapv_inplace(T::tanh);
            hidden.push(activation);
        }
        let logits = last.forward(hidden.last().map_or(x.view(), |a| a.view()));
        (hidden, logits)
    }

    /// Logits for a batch (N × classes).
    pub fn logits(&self, x: ArrayView2<'_, T>) -> Array2<T> {
        self.forward_with_hidden(x).1
    }

    /// Mean cross-entropy and accuracy, in chunks to bound memory.
    pub fn evaluate(&self, x: ArrayView2<'_, T>, y: &[u8]) -> Evaluation {
        assert_eq!(x.nrows(), y.len(), "inputs and labels differ in number");
        if y.is_empty() {
            return Evaluation { loss: f64::NAN, accuracy: f64::NAN };
        }
        let (mut loss_sum, mut correct) = (0.0, 0);
        for (start, chunk) in x.axis_chunks_iter(Axis(0), EVAL_CHUNK).enumerate() {
            let labels = &y[start * EVAL_CHUNK..start * EVAL_CHUNK + chunk.nrows()];
            let scored = softmax_cross_entropy(&self.logits(chunk), labels);
            loss_sum += scored.loss_sum;
            correct += scored.correct;
        }
        Evaluation { loss: loss_sum / y.len() as f64, accuracy: correct as f64 / y.len() as f64 }
    }

    /// Mean cross-entropy over the batch.
    pub fn loss(&self, x: ArrayView2<'_, T>, y: &[u8]) -> f64 {
        self.evaluate(x, y).loss
    }

    /// Fraction of samples classified correctly.
    pub fn accuracy(&self, x: ArrayView2<'_, T>, y: &[u8]) -> f64 {
        self.evaluate(x, y).accuracy
    }

    /// Mean cross-entropy on `(x, y)` of the network whose flat parameter
    /// tensors are `params` (the order and layout of [`Self::params`]),
    /// without building a network: what an optimizer's loss callback
    /// needs, since it is handed parameter slices while the network's own
    /// buffers are borrowed for the step. Layer widths are read off the
    /// tensor lengths; tensors that do not fit together are an error.
    pub fn loss_at(params: &[&[T]], x: ArrayView2<'_, T>, y: &[u8]) -> Result<f64, String> {
        if params.is_empty() || params.len() % 2 != 0 {
            return Err(format!("expected [W1, b1, W2, b2, ...], got {} tensors", params.len()));
        }
        if x.nrows() != y.len() || y.is_empty() {
            return Err(format!("{} inputs for {} labels", x.nrows(), y.len()));
        }
        let layers = params.len() / 2;
        let mut activation: Option<Array2<T>> = None;
        for (index, pair) in params.chunks(2).enumerate() {
            let (weight, bias) = (pair[0], pair[1]);
            let input = activation.as_ref().map_or(x.view(), |a| a.view());
            let (fan_out, fan_in) = (bias.len(), input.ncols());
            if fan_out == 0 || weight.len() != fan_out * fan_in {
                return Err(format!("layer {index}: weight has {} elements, bias {fan_out}, input width {fan_in}", weight.len()));
            }
            let weight = ArrayView2::from_shape((fan_out, fan_in), weight).map_err(|e| e.to_string())?;
            let bias = ndarray::ArrayView1::from(bias);
            let mut z = input.dot(&weight.t()) + bias;
            if index + 1 < layers {
                z.mapv_inplace(T::tanh);
            }
            activation = Some(z);
        }
        let logits = activation.expect("at least one layer");
        if logits.ncols() < 2 {
            return Err(format!("{} output classes", logits.ncols()));
        }
        if let Some(&bad) = y.iter().find(|&&l| usize::from(l) >= logits.ncols()) {
            return Err(format!("label {bad} out of range for {} classes", logits.ncols()));
        }
        Ok(softmax_cross_entropy(&logits, y).loss_sum / y.len() as f64)
    }

    /// Forward and backward pass over a minibatch.
    ///
    /// With `δ` the N × out matrix of each sample's OWN loss gradient w.r.t.
    /// a layer's pre-activations and `a` its N × in input:
    ///
    /// * mean gradient: `g_W = δᵀa / N`, `g_b = Σ_i δ_i / N`;
    /// * `S_W = (δ⊙δ)ᵀ(a⊙a)`, `S_b = Σ_i δ_i⊙δ_i`: exact because sample i's
    ///   weight gradient is the outer product `δ_i a_iᵀ`, whose square is
    ///   `(δ_i⊙δ_i)(a_i⊙a_i)ᵀ`;
    /// * GGN diagonal: the cross-entropy Hessian w.r.t. the logits,
    ///   `H = diag(p) − ppᵀ`, factors exactly as `H = QQᵀ` with columns
    ///   `q_c = √p_c (e_c − p)`. Each column is backpropagated like `δ`; the
    ///   GGN diagonal is `Σ_i Σ_c (J_iᵀ q_ic)² / N`, and because `a_i` does
    ///   not depend on c this is `(Σ_c δ_c⊙δ_c)ᵀ(a⊙a) / N`: one product per
    ///   weight tensor however many classes there are.
    pub fn backward(&self, x: ArrayView2<'_, T>, y: &[u8], want: Want) -> Batch<T> {
        let n = x.nrows();
        assert!(n > 0, "empty minibatch");
        assert_eq!(n, y.len(), "inputs and labels differ in number");
        let (hidden, logits) = self.forward_with_hidden(x);
        let scored = softmax_cross_entropy(&logits, y);
        let inv_n = T::from_f64(1.0 / n as f64);

        // Gradient of each sample's own loss w.r.t. its logits: p − onehot(y).
        let mut delta = scored.probs.clone();
        for (i, &label) in y.iter().enumerate() {
            delta[[i, usize::from(label)]] -= T::one();
        }
        // All CLASSES columns of Q for all samples, stacked class-major:
        // rows c·N .. (c+1)·N hold column c for every sample.
        let mut ggn_columns = want.ggn_diag.then(|| hessian_factor_columns(&scored.probs));

        // Filled from the last layer backwards, reversed at the end.
        let mut grads = Vec::with_capacity(2 * self.layers.len());
        let mut sum_sq_grads = want.sum_sq_grads.then(Vec::new);
        let mut ggn_diag = want.ggn_diag.then(Vec::new);

        for (index, layer) in self.layers.iter().enumerate().rev() {
            let input = if index == 0 { x.view() } else { hidden[index - 1].view() };

            grads.push(flat(delta.sum_axis(Axis(0)) * inv_n));
            grads.push(flat2(delta.t().dot(&input) * inv_n));

            if want.sum_sq_grads || want.ggn_diag {
                let input_sq = input.mapv(|v| v * v);
                if let Some(out) = sum_sq_grads.as_mut() {
                    let delta_sq = delta.mapv(|v| v * v);
                    out.push(flat(delta_sq.sum_axis(Axis(0))));
                    out.push(flat2(delta_sq.t().dot(&input_sq)));
                }
                if let (Some(out), Some(columns)) = (ggn_diag.as_mut(), ggn_columns.as_ref()) {
                    let per_unit = sum_squares_over_blocks(columns, n);
                    out.push(flat(per_unit.sum_axis(Axis(0)) * inv_n));
                    out.push(flat2(per_unit.t().dot(&input_sq) * inv_n));
                }
            }

            if index > 0 {
                // Through W, then through tanh: d tanh(z)/dz = 1 − tanh(z)².
                let tanh_derivative = hidden[index - 1].mapv(|a| T::one() - a * a);
                delta = delta.dot(&layer.weight) * &tanh_derivative;
                if let Some(columns) = ggn_columns.as_mut() {
                    let mut below = columns.dot(&layer.weight);
                    for mut block in below.axis_chunks_iter_mut(Axis(0), n) {
                        block *= &tanh_derivative;
                    }
                    *columns = below;
                }
            }
        }

        let into_param_order = |mut tensors: Vec<Vec<T>>| {
            // Pushed as [b_L, W_L, ..., b_1, W_1]; reversing gives [W_1, b_1, ...].
            tensors.reverse();
            tensors
        };
        Batch {
            batch_size: n,
            loss: scored.loss_sum / n as f64,
            correct: scored.correct,
            grads: into_param_order(grads),
            sum_sq_grads: sum_sq_grads.map(into_param_order),
            ggn_diag: ggn_diag.map(into_param_order),
        }
    }
}

/// Softmax probabilities, summed cross-entropy and the number of correct
/// arg-max predictions for a batch of logits.
struct Scored<T> {
    probs: Array2<T>,
    loss_sum: f64,
    correct: usize,
}

/// Numerically stable: subtracting each row's maximum keeps `exp` from
/// overflowing, and the loss is taken as `logsumexp − z_y` rather than
/// `−ln p_y`, which would lose everything when p_y underflows.
fn softmax_cross_entropy<T: Real>(logits: &Array2<T>, y: &[u8]) -> Scored<T> {
    assert_eq!(logits.nrows(), y.len(), "logits and labels differ in number");
    let mut probs = logits.clone();
    let (mut loss_sum, mut correct) = (0.0, 0);
    for (mut row, &label) in probs.rows_mut().into_iter().zip(y) {
        let label = usize::from(label);
        assert!(label < row.len(), "label {label} out of range for {} classes", row.len());
        let (mut argmax, mut max) = (0, row[0]);
        for (k, &z) in row.iter().enumerate() {
            if z > max {
                (argmax, max) = (k, z);
            }
        }
        correct += usize::from(argmax == label);
        let label_logit = row[label];
        row.mapv_inplace(|z| (z - max).exp());
        let sum = row.sum();
        loss_sum += (sum.ln() + max - label_logit).to_f64();
        row /= sum;
    }
    Scored { probs, loss_sum, correct }
}

/// The columns `q_c = √p_c (e_c − p)` of the exact factor `Q` with
/// `QQᵀ = diag(p) − ppᵀ`, for every sample, stacked class-major into a
/// (classes·N) × classes matrix.
fn hessian_factor_columns<T: Real>(probs: &Array2<T>) -> Array2<T> {
    let (n, classes) = probs.dim();
    Array2::from_shape_fn((classes * n, classes), |(row, k)| {
        let (column, sample) = (row / n, row % n);
        let unit = if k == column { T::one() } else { T::zero() };
        probs[[sample, column]].sqrt() * (unit - probs[[sample, k]])
    })
}

/// Sums the squares of the `block_rows`-row blocks of `stacked` (one block
/// per Hessian-factor column) into a single block.
fn sum_squares_over_blocks<T: Real>(stacked: &Array2<T>, block_rows: usize) -> Array2<T> {
    let mut total = Array2::zeros((block_rows, stacked.ncols()));
    for block in stacked.axis_chunks_iter(Axis(0), block_rows) {
        Zip::from(&mut total).and(&block).for_each(|t, &v| *t += v * v);
    }
    total
}

fn flat<T: Real>(vector: Array1<T>) -> Vec<T> {
    vector.to_vec()
}

/// Row-major flattening; free when the matrix product already produced
/// standard layout (the usual case), a copy otherwise.
fn flat2<T: Real>(matrix: Array2<T>) -> Vec<T> {
    if matrix.is_standard_layout() {
        let (data, offset) = matrix.into_raw_vec_and_offset();
        debug_assert_eq!(offset.unwrap_or(0), 0);
        data
    } else {
        matrix.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{fallback, Minibatches};
    use ndarray::s;

    const SHAPES: [&[usize]; 3] = [&[6, 3], &[6, 4, 3], &[6, 5, 4, 3]];
    const N: usize = 5;

    fn tiny_batch(inputs: usize, classes: usize, seed: u64) -> (Array2<f64>, Vec<u8>) {
        let mut rng = SplitMix64::new(seed);
        let x = Array2::from_shape_simple_fn((N, inputs), || rng.normal());
        let y = (0..N).map(|_| rng.below(classes) as u8).collect();
        (x, y)
    }

    /// Makes the tiny nets less benign than the default init (bigger weights
    /// saturate tanh and spread the softmax), so the checks mean more.
    fn tiny_net(sizes: &[usize], seed: u64) -> Network<f64> {
        let mut net = Network::<f64>::new(sizes, seed);
        for tensor in net.params_mut() {
            tensor.iter_mut().for_each(|v| *v *= 2.0);
        }
        net
    }

    fn with_param(net: &Network<f64>, tensor: usize, index: usize, change: f64) -> Network<f64> {
        let mut moved = net.clone();
        moved.params_mut()[tensor][index] += change;
        moved
    }

    fn assert_close(what: &str, got: &[f64], want: &[f64], tolerance: f64) {
        assert_eq!(got.len(), want.len(), "{what}: lengths differ");
        for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= tolerance * (1.0 + w.abs()), "{what}[{k}]: got {g:e}, want {w:e}");
        }
    }

    #[test]
    fn gradient_matches_central_differences() {
        for (case, sizes) in SHAPES.iter().enumerate() {
            let net = tiny_net(sizes, 10 + case as u64);
            let (x, y) = tiny_batch(sizes[0], *sizes.last().unwrap(), 20 + case as u64);
            let batch = net.backward(x.view(), &y, Want::GRAD);
            assert!((batch.loss - net.loss(x.view(), &y)).abs() < 1e-12);
            let step = 1e-5;
            for (t, tensor) in net.params().iter().enumerate() {
                let numeric: Vec<f64> = (0..tensor.len())
                    .map(|k| {
                        let up = with_param(&net, t, k, step).loss(x.view(), &y);
                        let down = with_param(&net, t, k, -step).loss(x.view(), &y);
                        (up - down) / (2.0 * step)
                    })
                    .collect();
                assert_close(&format!("{sizes:?} grad tensor {t}"), &batch.grads[t], &numeric, 1e-7);
            }
        }
    }

    #[test]
    fn loss_at_given_slices_matches_the_network() {
        for (case, sizes) in SHAPES.iter().enumerate() {
            let net = tiny_net(sizes, 100 + case as u64);
            let (x, y) = tiny_batch(sizes[0], *sizes.last().unwrap(), 110 + case as u64);
            let at = Network::<f64>::loss_at(&net.params(), x.view(), &y).unwrap();
            assert!((at - net.loss(x.view(), &y)).abs() < 1e-12, "{sizes:?}");
            // Other values in the slices: the loss of the network holding them.
            let moved = with_param(&with_param(&net, 0, 1, 0.3), net.params().len() - 1, 0, -0.7);
            let at = Network::<f64>::loss_at(&moved.params(), x.view(), &y).unwrap();
            assert!((at - moved.loss(x.view(), &y)).abs() < 1e-12, "{sizes:?} moved");
        }
        // The f32 model the benchmark trains, on real-sized inputs.
        let data = fallback(3);
        let net = Model::mlp(5);
        let x = data.train_x.slice(s![..64, ..]);
        let y = &data.train_y[..64];
        let at = Model::loss_at(&net.params(), x, y).unwrap();
        assert!((at - net.loss(x, y)).abs() < 1e-6);
        // Tensors that do not fit together are reported, not a panic.
        let params = net.params();
        assert!(Model::loss_at(&params[..3], x, y).is_err());
        assert!(Model::loss_at(&[params[0], params[3]], x, y).is_err());
        assert!(Model::loss_at(&params, x, &y[..10]).is_err());
    }

    #[test]
    fn sum_sq_grads_matches_per_sample_brute_force() {
        for (case, sizes) in SHAPES.iter().enumerate() {
            let net = tiny_net(sizes, 30 + case as u64);
            let (x, y) = tiny_batch(sizes[0], *sizes.last().unwrap(), 40 + case as u64);
            let batch = net.backward(x.view(), &y, Want::WITH_SUM_SQ_GRADS);
            let mut brute: Vec<Vec<f64>> = net.params().iter().map(|p| vec![0.0; p.len()]).collect();
            for i in 0..N {
                // The mean over a batch of one is that sample's own loss.
                let single = net.backward(x.slice(s![i..i + 1, ..]), &y[i..i + 1], Want::GRAD);
                for (sum, grad) in brute.iter_mut().zip(&single.grads) {
                    sum.iter_mut().zip(grad).for_each(|(s, g)| *s += g * g);
                }
            }
            let got = batch.sum_sq_grads.as_ref().unwrap();
            for t in 0..brute.len() {
                assert_close(&format!("{sizes:?} S tensor {t}"), &got[t], &brute[t], 1e-12);
            }
        }
    }

    #[test]
    fn ggn_diag_matches_explicit_jacobian_construction() {
        for (case, sizes) in SHAPES.iter().enumerate() {
            let net = tiny_net(sizes, 50 + case as u64);
            let classes = *sizes.last().unwrap();
            let (x, y) = tiny_batch(sizes[0], classes, 60 + case as u64);
            let batch = net.backward(x.view(), &y, Want::WITH_GGN_DIAG);
            let step = 1e-5;
            let mut brute: Vec<Vec<f64>> = net.params().iter().map(|p| vec![0.0; p.len()]).collect();
            for i in 0..N {
                let xi = x.slice(s![i..i + 1, ..]);
                let logits = net.logits(xi);
                let z = logits.row(0);
                let max = z.fold(f64::MIN, |m, &v| m.max(v));
                let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
                let p: Vec<f64> = e.iter().map(|v| v / e.iter().sum::<f64>()).collect();
                let hessian = |a: usize, b: usize| {
                    if a == b {
                        p[a] - p[a] * p[b]
                    } else {
                        -p[a] * p[b]
                    }
                };
                for (t, tensor) in net.params().iter().enumerate() {
                    for (k, slot) in brute[t].iter_mut().enumerate().take(tensor.len()) {
                        // Column k of the logits' Jacobian, by central differences.
                        let up = with_param(&net, t, k, step).logits(xi);
                        let down = with_param(&net, t, k, -step).logits(xi);
                        let jacobian: Vec<f64> = (0..classes).map(|c| (up[[0, c]] - down[[0, c]]) / (2.0 * step)).collect();
                        let mut quadratic = 0.0;
                        for a in 0..classes {
                            for b in 0..classes {
                                quadratic += jacobian[a] * hessian(a, b) * jacobian[b];
                            }
                        }
                        *slot += quadratic / N as f64;
                    }
                }
            }
            let got = batch.ggn_diag.as_ref().unwrap();
            for t in 0..brute.len() {
                assert_close(&format!("{sizes:?} GGN tensor {t}"), &got[t], &brute[t], 1e-7);
            }
        }
    }

    /// For a linear model the GGN is the Hessian, which finite differences
    /// of the loss check independently of any Jacobian bookkeeping.
    #[test]
    fn ggn_of_logistic_regression_is_the_hessian_diagonal() {
        let net = tiny_net(&[6, 3], 70);
        let (x, y) = tiny_batch(6, 3, 71);
        let batch = net.backward(x.view(), &y, Want::ALL);
        let centre = net.loss(x.view(), &y);
        let step = 1e-4;
        for (t, tensor) in net.params().iter().enumerate() {
            let second: Vec<f64> = (0..tensor.len())
                .map(|k| {
                    let up = with_param(&net, t, k, step).loss(x.view(), &y);
                    let down = with_param(&net, t, k, -step).loss(x.view(), &y);
                    (up - 2.0 * centre + down) / (step * step)
                })
                .collect();
            assert_close(&format!("Hessian tensor {t}"), &batch.ggn_diag.as_ref().unwrap()[t], &second, 1e-5);
        }
    }

    #[test]
    fn want_selects_outputs_without_changing_the_gradient() {
        let net = tiny_net(&[6, 4, 3], 80);
        let (x, y) = tiny_batch(6, 3, 81);
        let plain = net.backward(x.view(), &y, Want::GRAD);
        assert!(plain.sum_sq_grads.is_none() && plain.ggn_diag.is_none());
        let with_s = net.backward(x.view(), &y, Want::WITH_SUM_SQ_GRADS);
        assert!(with_s.sum_sq_grads.is_some() && with_s.ggn_diag.is_none());
        let with_ggn = net.backward(x.view(), &y, Want::WITH_GGN_DIAG);
        assert!(with_ggn.sum_sq_grads.is_none() && with_ggn.ggn_diag.is_some());
        let all = net.backward(x.view(), &y, Want::ALL);
        assert_eq!(all.grads, plain.grads);
        assert_eq!(all.sum_sq_grads, with_s.sum_sq_grads);
        assert_eq!(all.ggn_diag, with_ggn.ggn_diag);
        assert_eq!(all.batch_size, N);
        let shapes = net.param_shapes();
        for list in [&all.grads, all.sum_sq_grads.as_ref().unwrap(), all.ggn_diag.as_ref().unwrap()] {
            let lengths: Vec<usize> = list.iter().map(Vec::len).collect();
            let expected: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
            assert_eq!(lengths, expected);
        }
        // Variance is S/N − g², which must not be (meaningfully) negative.
        for (s, g) in all.sum_sq_grads.as_ref().unwrap().iter().zip(&all.grads) {
            for (&s, &g) in s.iter().zip(g) {
                assert!(s / N as f64 - g * g > -1e-12);
            }
        }
    }

    #[test]
    fn single_precision_agrees_with_double() {
        let sizes = [6, 4, 3];
        let wide = tiny_net(&sizes, 90);
        let mut narrow = Network::<f32>::new(&sizes, 90);
        for (dst, src) in narrow.params_mut().into_iter().zip(wide.params()) {
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s as f32);
        }
        let (x, y) = tiny_batch(6, 3, 91);
        let want = wide.backward(x.view(), &y, Want::ALL);
        let got = narrow.backward(x.mapv(|v| v as f32).view(), &y, Want::ALL);
        assert!((got.loss - want.loss).abs() < 1e-5);
        let widen = |lists: &[Vec<f32>]| -> Vec<Vec<f64>> { lists.iter().map(|l| l.iter().map(|&v| f64::from(v)).collect()).collect() };
        let pairs = [
            (widen(&got.grads), want.grads.clone()),
            (widen(got.sum_sq_grads.as_ref().unwrap()), want.sum_sq_grads.clone().unwrap()),
            (widen(got.ggn_diag.as_ref().unwrap()), want.ggn_diag.clone().unwrap()),
        ];
        for (g, w) in &pairs {
            for (gt, wt) in g.iter().zip(w) {
                assert_close("f32 vs f64", gt, wt, 1e-4);
            }
        }
    }

    #[test]
    fn same_seed_same_init_and_torch_like_layout() {
        let a = Model::mlp(3);
        let b = Model::mlp(3);
        assert_eq!(a.params(), b.params());
        assert_ne!(a.params(), Model::mlp(4).params());
        assert_eq!(a.param_shapes(), vec![vec![120, 784], vec![120], vec![10, 120], vec![10]]);
        assert_eq!(a.param_names(), vec!["0.weight", "0.bias", "1.weight", "1.bias"]);
        assert_eq!(a.num_params(), 784 * 120 + 120 + 120 * 10 + 10);
        assert_eq!(Model::logistic_regression(0).layer_sizes(), vec![784, 10]);
        let bound = 1.0 / 784f32.sqrt();
        assert!(a.params()[0].iter().all(|w| w.abs() <= bound));

        // W is (out, in) row-major: W[o][i] lives at o·in + i.
        let mut net = Network::<f64>::new(&[3, 2], 0);
        for tensor in net.params_mut() {
            tensor.iter_mut().for_each(|v| *v = 0.0);
        }
        let (row, column, inputs) = (1, 2, 3);
        net.params_mut()[0][row * inputs + column] = 5.0; // W[1][2]
        net.params_mut()[1][0] = -1.0; // b[0]
        let logits = net.logits(Array2::from_shape_vec((1, 3), vec![0.0, 0.0, 2.0]).unwrap().view());
        assert_eq!(logits.row(0).to_vec(), vec![-1.0, 10.0]);
    }

    #[test]
    fn loss_is_stable_for_extreme_logits() {
        let mut net = Model::new(&[2, 3], 0);
        for tensor in net.params_mut() {
            tensor.iter_mut().for_each(|v| *v = 0.0);
        }
        net.params_mut()[1].copy_from_slice(&[1e4, -1e4, 0.0]);
        let x = Array2::<f32>::zeros((2, 2));
        let batch = net.backward(x.view(), &[0, 1], Want::ALL);
        // Sample 0 is certain and right (loss 0), sample 1 certain and wrong
        // (loss 2e4): mean 1e4, finite everywhere.
        assert!((batch.loss - 1e4).abs() < 1.0, "loss {}", batch.loss);
        let all = [&batch.grads, batch.sum_sq_grads.as_ref().unwrap(), batch.ggn_diag.as_ref().unwrap()];
        assert!(all.iter().all(|list| list.iter().flatten().all(|v| v.is_finite())));
    }

    /// The built-in stand-in data: a linear model must learn it far above
    /// chance (10%) but stay well short of perfect.
    #[test]
    fn fallback_is_learnable_but_not_trivial() {
        let data = fallback(0);
        let mut net = Model::logistic_regression(0);
        let learning_rate = 0.5;
        for epoch in 0..15 {
            for batch in Minibatches::new(&data.train_x, &data.train_y, 64, 1, epoch) {
                let grads = net.backward(batch.x.view(), &batch.y, Want::GRAD).grads;
                for (param, grad) in net.params_mut().into_iter().zip(&grads) {
                    param.iter_mut().zip(grad).for_each(|(p, g)| *p -= learning_rate * g);
                }
            }
        }
        let train = net.evaluate(data.train_x.view(), &data.train_y);
        let test = net.evaluate(data.test_x.view(), &data.test_y);
        eprintln!("fallback, logistic regression: train {train:?}, test {test:?}");
        assert!((0.5..0.95).contains(&test.accuracy), "test accuracy {}", test.accuracy);
    }
}
