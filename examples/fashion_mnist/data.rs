//! Fashion-MNIST data for the benchmark: a gzip IDX reader, a deterministic
//! built-in stand-in dataset for machines without the real files, and a
//! seeded minibatch iterator.
//!
//! Everything here is deterministic given a seed, so two optimizers compared
//! by the benchmark see exactly the same batches in exactly the same order.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;
use ndarray::{Array2, Axis};

/// Pixels per image (28 × 28), the input width of every model.
pub const FEATURES: usize = 784;
/// Number of classes (T-shirt, trouser, ..., ankle boot).
pub const CLASSES: usize = 10;
/// Side length of the square images.
pub const IMAGE_SIDE: usize = 28;

/// Where Debian's `dataset-fashion-mnist` package installs the files.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// IDX magic numbers: two zero bytes, the element type (0x08 = u8), then the
/// number of dimensions.
const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Images as rows of `FEATURES` values in [0, 1], labels in `0..CLASSES`.
#[derive(Clone, Debug)]
pub struct Dataset {
    pub train_x: Array2<f32>,
    pub train_y: Vec<u8>,
    pub test_x: Array2<f32>,
    pub test_y: Vec<u8>,
}

impl Dataset {
    /// Seeded, shuffled minibatches over the training set for one epoch.
    pub fn train_batches(&self, batch_size: usize, seed: u64, epoch: u64) -> Minibatches<'_> {
        Minibatches::new(&self.train_x, &self.train_y, batch_size, seed, epoch)
    }

    /// One line describing the shapes, for logs.
    pub fn summary(&self) -> String {
        format!(
            "train {}x{} ({} labels), test {}x{} ({} labels)",
            self.train_x.nrows(),
            self.train_x.ncols(),
            self.train_y.len(),
            self.test_x.nrows(),
            self.test_x.ncols(),
            self.test_y.len()
        )
    }
}

// ---------------------------------------------------------------------------
// IDX reading
// ---------------------------------------------------------------------------

/// Reads a whole file, gunzipping it when it starts with the gzip magic
/// (raw, uncompressed IDX files are accepted too, which costs nothing).
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, String> {
    let mut raw = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut raw)).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut decoded = Vec::new();
        GzDecoder::new(raw.as_slice()).read_to_end(&mut decoded).map_err(|e| format!("{}: corrupt or truncated gzip stream: {e}", path.display()))?;
        Ok(decoded)
    } else {
        Ok(raw)
    }
}

fn read_be_u32(bytes: &[u8], offset: usize, what: &str) -> Result<u32, String> {
    bytes
        .get(offset..offset + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("truncated IDX header: missing {what} (file is {} bytes)", bytes.len()))
}

/// Checks the magic, reads the dimensions and verifies the payload length
/// before anything is allocated from the (untrusted) header.
fn parse_idx_header(bytes: &[u8], expected_magic: u32) -> Result<(Vec<usize>, &[u8]), String> {
    let magic = read_be_u32(bytes, 0, "magic number")?;
    if magic != expected_magic {
        return Err(format!(
            "bad IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x} \
             (u8 data with {} dimensions)",
            expected_magic & 0xff
        ));
    }
    let ndim = (expected_magic & 0xff) as usize;
    let mut dims = Vec::with_capacity(ndim);
    for d in 0..ndim {
        dims.push(read_be_u32(bytes, 4 + 4 * d, &format!("dimension {d}"))? as usize);
    }
    let header_len = 4 + 4 * ndim;
    let payload_len = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).ok_or_else(|| format!("IDX dimensions {dims:?} overflow"))?;
    let payload = &bytes[header_len..];
    if payload.len() < payload_len {
        return Err(format!("truncated IDX data: dimensions {dims:?} need {payload_len} bytes, found {}", payload.len()));
    }
    if payload.len() > payload_len {
        return Err(format!("IDX data longer than its dimensions {dims:?} say: {payload_len} bytes expected, found {}", payload.len()));
    }
    Ok((dims, payload))
}

/// Parses an (already decompressed) idx3-ubyte image file into an
/// `images × (rows·cols)` matrix scaled from 0..=255 to [0, 1].
pub fn parse_idx_images(bytes: &[u8]) -> Result<Array2<f32>, String> {
    let (dims, payload) = parse_idx_header(bytes, IDX_IMAGES_MAGIC)?;
    let (count, pixels) = (dims[0], dims[1] * dims[2]);
    let values: Vec<f32> = payload.iter().map(|&p| f32::from(p) / 255.0).collect();
    Array2::from_shape_vec((count, pixels), values).map_err(|e| format!("IDX images: {e}"))
}

/// Parses an (already decompressed) idx1-ubyte label file.
pub fn parse_idx_labels(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (_dims, payload) = parse_idx_header(bytes, IDX_LABELS_MAGIC)?;
    Ok(payload.to_vec())
}

/// Reads a gzip (or raw) idx3-ubyte image file.
pub fn read_idx_images(path: &Path) -> Result<Array2<f32>, String> {
    parse_idx_images(&read_maybe_gzip(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads a gzip (or raw) idx1-ubyte label file.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, String> {
    parse_idx_labels(&read_maybe_gzip(path)?).map_err(|e| format!("{}: {e}", path.display()))
}

fn read_split(dir: &Path, prefix: &str) -> Result<(Array2<f32>, Vec<u8>), String> {
    let images_path = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let labels_path = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let images = read_idx_images(&images_path)?;
    let labels = read_idx_labels(&labels_path)?;
    if images.ncols() != FEATURES {
        return Err(format!("{}: images have {} pixels, expected {FEATURES} (28x28)", images_path.display(), images.ncols()));
    }
    if images.nrows() != labels.len() {
        return Err(format!("{} has {} images but {} has {} labels", images_path.display(), images.nrows(), labels_path.display(), labels.len()));
    }
    if let Some(bad) = labels.iter().find(|&&l| usize::from(l) >= CLASSES) {
        return Err(format!("{}: label {bad} is not below {CLASSES}", labels_path.display()));
    }
    Ok((images, labels))
}

/// Loads `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` from `dir`
/// (e.g. [`DEBIAN_DIR`]).
pub fn load(dir: &Path) -> Result<Dataset, String> {
    let (train_x, train_y) = read_split(dir, "train")?;
    let (test_x, test_y) = read_split(dir, "t10k")?;
    Ok(Dataset { train_x, train_y, test_x, test_y })
}

// ---------------------------------------------------------------------------
// Deterministic random numbers (no rand crate: the stream must never change
// under us between versions, or recorded benchmark results stop reproducing)
// ---------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and good enough for
/// shuffling, initialisation and synthetic data.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// A generator for a sub-stream (e.g. one epoch) that does not overlap
    /// in any practical sense with the stream of `seed` or other `stream`s.
    pub fn derived(seed: u64, stream: u64) -> Self {
        let mut mixer = Self::new(seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03));
        Self::new(mixer.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Uniform integer in `0..n` (multiply-shift; the bias is below 2^-50
    /// for the sizes used here).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Standard normal by Box–Muller (one of the pair is discarded to keep
    /// the generator stateless apart from `state`).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // in (0, 1], so ln is finite
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------
// Minibatches
// ---------------------------------------------------------------------------

/// One minibatch, copied out of the dataset (rows gathered in shuffled order).
#[derive(Clone, Debug)]
pub struct Minibatch {
    pub x: Array2<f32>,
    pub y: Vec<u8>,
}

/// The minibatches of one epoch. The order is a permutation drawn from
/// `(seed, epoch)`, so it differs between epochs but is reproducible. The
/// last batch is smaller when `batch_size` does not divide the data size:
/// every sample is visited exactly once per epoch.
pub struct Minibatches<'a> {
    x: &'a Array2<f32>,
    y: &'a [u8],
    order: Vec<usize>,
    batch_size: usize,
    position: usize,
}

impl<'a> Minibatches<'a> {
    pub fn new(x: &'a Array2<f32>, y: &'a [u8], batch_size: usize, seed: u64, epoch: u64) -> Self {
        assert!(batch_size > 0, "batch_size must be positive");
        assert_eq!(x.nrows(), y.len(), "images and labels differ in number");
        let mut order: Vec<usize> = (0..y.len()).collect();
        SplitMix64::derived(seed, epoch).shuffle(&mut order);
        Self { x, y, order, batch_size, position: 0 }
    }
}

impl Iterator for Minibatches<'_> {
    type Item = Minibatch;

    fn next(&mut self) -> Option<Minibatch> {
        if self.position >= self.order.len() {
            return None;
        }
        let end = (self.position + self.batch_size).min(self.order.len());
        let rows = &self.order[self.position..end];
        self.position = end;
        Some(Minibatch { x: self.x.select(Axis(0), rows), y: rows.iter().map(|&r| self.y[r]).collect() })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = (self.order.len() - self.position).div_ceil(self.batch_size);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Minibatches<'_> {}

// ---------------------------------------------------------------------------
// Built-in stand-in dataset
// ---------------------------------------------------------------------------

const FALLBACK_TRAIN: usize = 6000;
const FALLBACK_TEST: usize = 1000;

/// Ten smooth "garment" prototypes: each a normalised sum of a few
/// anisotropic Gaussian blobs, so neighbouring pixels are correlated as in
/// real images and small shifts change the picture gradually.
fn fallback_prototypes(rng: &mut SplitMix64) -> Vec<[f64; FEATURES]> {
    (0..CLASSES)
        .map(|_| {
            let mut image = [0.0; FEATURES];
            let blobs = 3 + rng.below(3);
            for _ in 0..blobs {
                let (centre_row, centre_col) = (rng.uniform(7.0, 21.0), rng.uniform(7.0, 21.0));
                let (sigma_row, sigma_col) = (rng.uniform(1.5, 5.0), rng.uniform(1.5, 5.0));
                let amplitude = rng.uniform(0.4, 1.0);
                for r in 0..IMAGE_SIDE {
                    for c in 0..IMAGE_SIDE {
                        let dr = (r as f64 - centre_row) / sigma_row;
                        let dc = (c as f64 - centre_col) / sigma_col;
                        image[r * IMAGE_SIDE + c] += amplitude * (-0.5 * (dr * dr + dc * dc)).exp();
                    }
                }
            }
            let peak = image.iter().cloned().fold(0.0, f64::max);
            image.iter_mut().for_each(|p| *p /= peak);
            image
        })
        .collect()
}

/// Draws `count` samples. Each is its class prototype blended with a random
/// other class (the blend weight sometimes approaches 1/2, which makes part
/// of the data genuinely ambiguous), shifted by up to 3 pixels, rescaled in
/// contrast and covered in pixel noise, then clipped to [0, 1].
fn fallback_samples(prototypes: &[[f64; FEATURES]], count: usize, rng: &mut SplitMix64) -> (Array2<f32>, Vec<u8>) {
    let mut labels: Vec<u8> = (0..count).map(|i| (i % CLASSES) as u8).collect();
    rng.shuffle(&mut labels);
    let mut x = Array2::<f32>::zeros((count, FEATURES));
    for (mut row, &label) in x.rows_mut().into_iter().zip(&labels) {
        let class = usize::from(label);
        let other = (class + 1 + rng.below(CLASSES - 1)) % CLASSES;
        let blend = 0.5 * rng.next_f64().powf(1.5);
        let shift_row = rng.below(7) as isize - 3;
        let shift_col = rng.below(7) as isize - 3;
        let contrast = rng.uniform(0.6, 1.0);
        for r in 0..IMAGE_SIDE {
            for c in 0..IMAGE_SIDE {
                let (sr, sc) = (r as isize - shift_row, c as isize - shift_col);
                let clean = if (0..IMAGE_SIDE as isize).contains(&sr) && (0..IMAGE_SIDE as isize).contains(&sc) {
                    let source = sr as usize * IMAGE_SIDE + sc as usize;
                    (1.0 - blend) * prototypes[class][source] + blend * prototypes[other][source]
                } else {
                    0.0
                };
                let noisy = contrast * clean + 0.15 * rng.normal();
                row[r * IMAGE_SIDE + c] = noisy.clamp(0.0, 1.0) as f32;
            }
        }
    }
    (x, labels)
}

/// A deterministic stand-in for Fashion-MNIST (6000 train / 1000 test,
/// 784 features in [0, 1], 10 balanced classes) for machines without the
/// real files. A linear model learns it well above chance but well short of
/// 100%; see the test `fallback_is_learnable_but_not_trivial` in model.rs.
pub fn fallback(seed: u64) -> Dataset {
    let mut rng = SplitMix64::new(seed);
    let prototypes = fallback_prototypes(&mut rng);
    let (train_x, train_y) = fallback_samples(&prototypes, FALLBACK_TRAIN, &mut rng);
    let (test_x, test_y) = fallback_samples(&prototypes, FALLBACK_TEST, &mut rng);
    Dataset { train_x, train_y, test_x, test_y }
}

// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;
    use std::path::PathBuf;

    /// A fresh directory per test so tests can run in parallel.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("autolr-fmnist-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut bytes = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [count, rows, cols] {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(pixels);
        bytes
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut bytes = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        bytes.extend_from_slice(labels);
        bytes
    }

    #[test]
    fn reads_gzip_idx_images_and_labels() {
        let dir = scratch_dir("good");
        let pixels: Vec<u8> = (0..2 * 2 * 3).map(|i| (i * 20) as u8).collect();
        let images_path = dir.join("images.gz");
        let labels_path = dir.join("labels.gz");
        std::fs::write(&images_path, gzip(&idx_images(2, 2, 3, &pixels))).unwrap();
        std::fs::write(&labels_path, gzip(&idx_labels(&[7, 1]))).unwrap();

        let images = read_idx_images(&images_path).unwrap();
        assert_eq!(images.dim(), (2, 6));
        assert_eq!(images[[0, 0]], 0.0);
        assert!((images[[1, 5]] - 220.0 / 255.0).abs() < 1e-7);
        assert!(images.iter().all(|&v| (0.0..=1.0).contains(&v)));
        assert_eq!(read_idx_labels(&labels_path).unwrap(), vec![7, 1]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_files_give_errors_not_panics() {
        let dir = scratch_dir("bad");
        let good = idx_images(2, 2, 3, &[9; 12]);

        // Payload shorter than the header promises (valid gzip around it).
        let short = dir.join("short.gz");
        std::fs::write(&short, gzip(&good[..good.len() - 1])).unwrap();
        let err = read_idx_images(&short).unwrap_err();
        assert!(err.contains("truncated IDX data"), "{err}");

        // The gzip stream itself cut off half-way.
        let cut = dir.join("cut.gz");
        let compressed = gzip(&good);
        std::fs::write(&cut, &compressed[..compressed.len() / 2]).unwrap();
        let err = read_idx_images(&cut).unwrap_err();
        assert!(err.contains("gzip"), "{err}");

        // Header cut off inside the dimensions.
        let err = parse_idx_images(&good[..9]).unwrap_err();
        assert!(err.contains("truncated IDX header"), "{err}");
        assert!(parse_idx_images(&[]).unwrap_err().contains("magic"));

        // A label file where images are expected, and vice versa.
        let labels = dir.join("labels.gz");
        std::fs::write(&labels, gzip(&idx_labels(&[1, 2]))).unwrap();
        let err = read_idx_images(&labels).unwrap_err();
        assert!(err.contains("bad IDX magic"), "{err}");
        let err = parse_idx_labels(&good).unwrap_err();
        assert!(err.contains("bad IDX magic"), "{err}");

        // A header whose dimensions overflow must not allocate or panic.
        let err = parse_idx_images(&idx_images(u32::MAX, u32::MAX, u32::MAX, &[])).unwrap_err();
        assert!(err.contains("overflow") || err.contains("truncated"), "{err}");

        // Trailing garbage and a missing file.
        assert!(parse_idx_labels(&[idx_labels(&[1]), vec![0]].concat()).is_err());
        let err = read_idx_labels(&dir.join("missing.gz")).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
        let err = load(&dir).unwrap_err();
        assert!(err.contains("train-images-idx3-ubyte.gz"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn minibatches_cover_each_sample_once_and_reshuffle_per_epoch() {
        let n = 103;
        let x = Array2::from_shape_fn((n, 3), |(i, j)| (i * 3 + j) as f32);
        let y: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let epoch_order = |epoch| -> Vec<usize> {
            let batches: Vec<Minibatch> = Minibatches::new(&x, &y, 10, 42, epoch).collect();
            assert_eq!(batches.len(), 11);
            assert_eq!(batches.last().unwrap().y.len(), 3);
            batches
                .iter()
                .flat_map(|b| {
                    b.x.rows()
                        .into_iter()
                        .zip(&b.y)
                        .map(|(row, &label)| {
                            let index = row[0] as usize / 3;
                            assert_eq!(label as usize, index % 10, "rows and labels stay paired");
                            index
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let first = epoch_order(0);
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        assert_eq!(first, epoch_order(0), "same seed and epoch, same order");
        assert_ne!(first, epoch_order(1), "a new epoch reshuffles");
        assert_eq!(Minibatches::new(&x, &y, 10, 42, 0).len(), 11);
    }

    #[test]
    fn fallback_is_deterministic_and_well_formed() {
        let a = fallback(7);
        assert_eq!(a.train_x.dim(), (FALLBACK_TRAIN, FEATURES));
        assert_eq!(a.test_x.dim(), (FALLBACK_TEST, FEATURES));
        assert_eq!(a.train_y.len(), FALLBACK_TRAIN);
        assert_eq!(a.test_y.len(), FALLBACK_TEST);
        assert!(a.train_x.iter().chain(a.test_x.iter()).all(|&v| (0.0..=1.0).contains(&v)));
        for class in 0..CLASSES as u8 {
            assert_eq!(a.train_y.iter().filter(|&&l| l == class).count(), FALLBACK_TRAIN / CLASSES);
        }
        let b = fallback(7);
        assert_eq!(a.train_x, b.train_x);
        assert_eq!(a.test_y, b.test_y);
        assert_ne!(a.train_x, fallback(8).train_x);
    }

    #[test]
    fn splitmix_matches_reference_and_is_sane() {
        // Reference values of SplitMix64 seeded with 0 (as in Vigna's splitmix64.c).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut rng = SplitMix64::new(1);
        let draws: Vec<f64> = (0..20_000).map(|_| rng.normal()).collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / draws.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
        assert!((0..1000).all(|_| rng.below(7) < 7));
    }

    /// Runs only where the Debian package is installed; skips otherwise.
    #[test]
    fn loads_real_fashion_mnist_when_installed() {
        let dir = Path::new(DEBIAN_DIR);
        if !dir.join("train-images-idx3-ubyte.gz").exists() {
            eprintln!("skipping: {DEBIAN_DIR} not installed");
            return;
        }
        let data = load(dir).unwrap();
        assert_eq!(data.train_x.dim(), (60_000, FEATURES));
        assert_eq!(data.test_x.dim(), (10_000, FEATURES));
        assert_eq!(data.train_y.len(), 60_000);
        assert_eq!(data.test_y.len(), 10_000);
        for class in 0..CLASSES as u8 {
            assert_eq!(data.train_y.iter().filter(|&&l| l == class).count(), 6000);
        }
        let mean = data.train_x.mean().unwrap();
        assert!((0.27..0.30).contains(&mean), "mean pixel {mean}"); // known: 0.2860
    }
}
