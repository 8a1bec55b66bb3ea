//! The network both models are, and what a model file's body must say about it.
//!
//! What it is for: the profiler and the mirror differ in their inputs (hashed request
//! features, window features) and in their files' kinds, not in the network: features ->
//! hidden (ReLU) -> one logit per persona -> softmax. The checks on a body's persona list
//! and hidden size, loading the weights, inference and the renormalisation callers rely
//! on live here once, so the two models cannot drift apart.
//!
//! What it is not: the file format ([`crate::envelope`]), each model's own content checks
//! (feature settings, window size) or training (`train`).

use burn::module::{Module, Param, ParamId};
use burn::nn::Linear;
use burn::prelude::{Device, Tensor, TensorData};
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use burn::tensor::activation::{relu, softmax};

use crate::ModelError;

/// Most personas a model may have.
pub(crate) const MAX_SLUGS: usize = 1024;

/// The network: features -> hidden (ReLU) -> logits.
#[derive(Module, Debug)]
pub(crate) struct Mlp {
    pub(crate) hidden: Linear,
    pub(crate) output: Linear,
}

/// The CPU device inference runs on (flex: pure Rust, single-threaded in our build).
pub(crate) fn inference_device() -> Device {
    Device::flex()
}

/// Checks what a model body says about its network: 1..=[`MAX_SLUGS`] personas, none
/// listed twice, and a hidden size in 1..=`max_hidden`. Runs before any weight is read,
/// so a hostile file cannot make us allocate a huge network.
pub(crate) fn check_shape(
    slugs: &[String],
    hidden: usize,
    max_hidden: usize,
) -> Result<(), ModelError> {
    let invalid = |reason: String| ModelError::Invalid { reason };
    if slugs.is_empty() || slugs.len() > MAX_SLUGS {
        return Err(invalid(format!(
            "{} personas (need 1..={MAX_SLUGS})",
            slugs.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(s) = slugs.iter().find(|s| !seen.insert(s.as_str())) {
        return Err(invalid(format!("persona {s:?} listed twice")));
    }
    if hidden == 0 || hidden > max_hidden {
        return Err(invalid(format!(
            "hidden size {hidden} outside 1..={max_hidden}"
        )));
    }
    Ok(())
}

impl Mlp {
    /// Builds the network from explicit weights (row layout: `[d_input, d_output]`). Param ids
    /// are fixed so that the same weights always give the same file bytes.
    pub(crate) fn from_weights(
        dims: [usize; 3],
        w1: Vec<f32>,
        b1: Vec<f32>,
        w2: Vec<f32>,
        b2: Vec<f32>,
        device: &Device,
    ) -> Self {
        let [d_in, d_hidden, d_out] = dims;
        let param2 = |data: Vec<f32>, shape: [usize; 2], id: u64| {
            let mut p =
                Param::from_tensor(Tensor::<2>::from_data(TensorData::new(data, shape), device));
            p.id = ParamId::from(id);
            p
        };
        let param1 = |data: Vec<f32>, id: u64| {
            let n = data.len();
            let mut p =
                Param::from_tensor(Tensor::<1>::from_data(TensorData::new(data, [n]), device));
            p.id = ParamId::from(id);
            p
        };
        Self {
            hidden: Linear {
                weight: param2(w1, [d_in, d_hidden], 1),
                bias: Some(param1(b1, 2)),
            },
            output: Linear {
                weight: param2(w2, [d_hidden, d_out], 3),
                bias: Some(param1(b2, 4)),
            },
        }
    }

    /// A zero network of the right shape, to load a record into.
    fn zeros(dims: [usize; 3], device: &Device) -> Self {
        let [d_in, d_hidden, d_out] = dims;
        Self::from_weights(
            dims,
            vec![0.0; d_in * d_hidden],
            vec![0.0; d_hidden],
            vec![0.0; d_hidden * d_out],
            vec![0.0; d_out],
            device,
        )
    }

    /// Loads a body's weights (burnpack bytes) into a network of `dims`
    /// (`[inputs, hidden, personas]`); weights of another shape are refused.
    pub(crate) fn load(
        dims: [usize; 3],
        module: Vec<u8>,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(module))
            .map_err(|source| ModelError::Weights { source })?;
        Self::zeros(dims, device)
            .try_load_record(record)
            .map_err(|source| ModelError::Weights { source })
    }

    /// The weights as the burnpack bytes a body stores.
    #[cfg(feature = "train")]
    pub(crate) fn into_module_bytes(self) -> Result<Vec<u8>, ModelError> {
        self.into_record()
            .into_bytes()
            .map(|b| b.to_vec())
            .map_err(|e| ModelError::Encode {
                reason: format!("burn record: {e}"),
            })
    }

    /// Logits for a batch `[n, d_in]`.
    pub(crate) fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.output.forward(relu(self.hidden.forward(x)))
    }

    /// Logits with a dropout mask (already scaled by 1/(1-p)) applied to the hidden layer.
    #[cfg(feature = "train")]
    pub(crate) fn forward_masked(&self, x: Tensor<2>, mask: Tensor<2>) -> Tensor<2> {
        self.output.forward(relu(self.hidden.forward(x)) * mask)
    }

    /// Probabilities (softmax) for `n` rows of `d` features laid out one after the other.
    pub(crate) fn probabilities(
        &self,
        x: &[f32],
        n: usize,
        d: usize,
        device: &Device,
    ) -> Result<Vec<f32>, ModelError> {
        if x.len() != n * d {
            return Err(ModelError::Inference {
                reason: format!("{} values for {n} rows of {d}", x.len()),
            });
        }
        let t = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, d]), device);
        softmax(self.forward(t), 1)
            .try_into_vec_as::<f32>()
            .map_err(|e| ModelError::Inference {
                reason: format!("{e:?}"),
            })
    }
}

/// Makes `p` a probability vector: non-finite or negative entries become 0, then it is
/// scaled to sum 1 (uniform if nothing is left). Guards the invariant callers rely on even
/// if the weights are pathological.
pub(crate) fn renormalize(p: &mut [f32]) {
    for v in p.iter_mut() {
        if !v.is_finite() || *v < 0.0 {
            *v = 0.0;
        }
    }
    let sum: f32 = p.iter().sum();
    if sum > 0.0 && sum.is_finite() {
        p.iter_mut().for_each(|v| *v /= sum);
    } else if !p.is_empty() {
        let u = 1.0 / p.len() as f32;
        p.iter_mut().for_each(|v| *v = u);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renormalize_repairs_what_it_can() {
        let mut p = [0.2, f32::NAN, -1.0, 0.6];
        renormalize(&mut p);
        assert_eq!(p, [0.25, 0.0, 0.0, 0.75]);
        let mut q = [f32::INFINITY, f32::NAN];
        renormalize(&mut q);
        assert_eq!(q, [0.5, 0.5]);
    }

    #[test]
    fn shape_checks_name_what_is_wrong() {
        let slugs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(check_shape(&slugs(&["a", "b"]), 8, 16).is_ok());
        let msg = |r: Result<(), ModelError>| r.expect_err("refused").to_string();
        assert!(msg(check_shape(&[], 8, 16)).contains("0 personas"));
        assert!(msg(check_shape(&slugs(&["a", "b", "a"]), 8, 16)).contains("\"a\" listed twice"));
        assert!(msg(check_shape(&slugs(&["a"]), 0, 16)).contains("hidden size 0"));
        assert!(msg(check_shape(&slugs(&["a"]), 17, 16)).contains("outside 1..=16"));
    }
}
