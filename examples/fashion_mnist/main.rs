//! Temporary driver for data.rs and model.rs (the real benchmark replaces
//! it): prints the dataset shapes and initial losses; with `--time`, times
//! one epoch of forward+backward per model and `Want`, and runs one epoch of
//! plain SGD as a sanity check that the pipeline learns.

mod data;
mod model;

use std::path::Path;
use std::time::Instant;

use model::{Model, Want};

fn main() {
    let started = Instant::now();
    let dataset = match data::load(Path::new(data::DEBIAN_DIR)) {
        Ok(dataset) => dataset,
        Err(error) => {
            eprintln!("{error}; using the built-in fallback dataset");
            data::fallback(0)
        }
    };
    println!(
        "{} (loaded in {:.2?})",
        dataset.summary(),
        started.elapsed()
    );

    let batch_size = 128;
    for mut net in [Model::logistic_regression(0), Model::mlp(0)] {
        let initial = net.evaluate(dataset.test_x.view(), &dataset.test_y);
        println!(
            "{}: {} parameters in {} tensors, initial test loss {:.4}, accuracy {:.4}",
            net.name(),
            net.num_params(),
            net.params().len(),
            initial.loss,
            initial.accuracy
        );
        print_first_batch_statistics(&net, &dataset, batch_size);
        if !std::env::args().any(|arg| arg == "--time") {
            continue;
        }
        for (label, want) in [
            ("grad", Want::GRAD),
            ("grad+S", Want::WITH_SUM_SQ_GRADS),
            ("grad+GGN", Want::WITH_GGN_DIAG),
            ("grad+S+GGN", Want::ALL),
        ] {
            let start = Instant::now();
            let mut loss_sum = 0.0;
            let mut batches = 0;
            for batch in dataset.train_batches(batch_size, 0, 0) {
                loss_sum += net.backward(batch.x.view(), &batch.y, want).loss;
                batches += 1;
            }
            println!(
                "  epoch forward+backward {label:<11} batch {batch_size}: {:>7.2?} ({batches} batches, mean loss {:.4})",
                start.elapsed(),
                loss_sum / batches as f64
            );
        }
        let learning_rate = 0.1;
        let start = Instant::now();
        for batch in dataset.train_batches(batch_size, 0, 1) {
            let grads = net.backward(batch.x.view(), &batch.y, Want::GRAD).grads;
            for (param, grad) in net.params_mut().into_iter().zip(&grads) {
                param
                    .iter_mut()
                    .zip(grad)
                    .for_each(|(p, g)| *p -= learning_rate * g);
            }
        }
        let trained = net.evaluate(dataset.test_x.view(), &dataset.test_y);
        println!(
            "  one epoch of SGD (lr {learning_rate}) in {:.2?}: test loss {:.4}, accuracy {:.4}",
            start.elapsed(),
            trained.loss,
            trained.accuracy
        );
    }
}

/// Per-tensor summary of one backward pass with everything switched on:
/// the gradient norm, the mean per-sample gradient variance S/N − g², and
/// the mean GGN diagonal entry.
fn print_first_batch_statistics(net: &Model, dataset: &data::Dataset, batch_size: usize) {
    let first = dataset
        .train_batches(batch_size, 0, 0)
        .next()
        .expect("non-empty training set");
    let batch = net.backward(first.x.view(), &first.y, Want::ALL);
    let n = batch.batch_size as f32;
    println!(
        "  first batch: loss {:.4} (recomputed {:.4}), {} of {} correct (accuracy {:.4})",
        batch.loss,
        net.loss(first.x.view(), &first.y),
        batch.correct,
        batch.batch_size,
        net.accuracy(first.x.view(), &first.y)
    );
    let sum_sq_grads = batch.sum_sq_grads.as_ref().expect("asked for");
    let ggn_diag = batch.ggn_diag.as_ref().expect("asked for");
    for (t, (name, shape)) in net.param_names().iter().zip(net.param_shapes()).enumerate() {
        let grad = &batch.grads[t];
        let grad_norm = grad.iter().map(|g| g * g).sum::<f32>().sqrt();
        let mean_variance = sum_sq_grads[t]
            .iter()
            .zip(grad)
            .map(|(s, g)| s / n - g * g)
            .sum::<f32>()
            / grad.len() as f32;
        let mean_ggn = ggn_diag[t].iter().sum::<f32>() / grad.len() as f32;
        println!(
            "    {name:<9} {shape:?}: |g| {grad_norm:.3e}, mean variance {mean_variance:.3e}, mean GGN diag {mean_ggn:.3e}"
        );
    }
}
