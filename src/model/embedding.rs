//! `model.embed_tokens`: the token embedding table `[vocab, hidden]`
//! (transformers `models/qwen2/modeling_qwen2.py::Qwen2Model.embed_tokens`, an `nn.Embedding`).
//!
//! Where the table lives depends on who reads it:
//! - tied to the vocabulary projection (`tie_word_embeddings`, Qwen2.5-0.5B): the head multiplies
//!   by the whole table, so it stays on the device;
//! - untied (Qwen2.5-7B, Qwen2.5-VL-7B): only the looked-up rows are ever needed, so the table
//!   stays in host memory and each call uploads `batch * seq` rows. For the 7B shape that keeps
//!   1.09 GB (152,064 x 3,584 bf16) off the GPU for a 14.7 MB upload per 2,048-token sequence.
//!   The table is frozen (never a LoRA target here), so nothing needs its gradient.

use burn::module::{Module, Param};
use burn::tensor::{backend::Backend, Element, Int, Tensor, TensorData};
use std::sync::Arc;

/// The rows of a host-resident table, in the backend's float dtype, row-major.
#[derive(Clone)]
pub struct HostTable {
    bytes: Arc<Vec<u8>>,
    dtype: burn::tensor::DType,
    vocab: usize,
    hidden: usize,
}

impl std::fmt::Debug for HostTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostTable([{}, {}] {:?})", self.vocab, self.hidden, self.dtype)
    }
}

/// Token embeddings, on the device or in host memory (see the module docs).
#[derive(Module, Debug)]
pub struct Embedding<B: Backend> {
    /// `[vocab, hidden]` on the device; `None` when the table lives in host memory.
    pub weight: Option<Param<Tensor<B, 2>>>,
    /// The host-resident table, when `weight` is `None`.
    #[module(skip)]
    pub host: Option<HostTable>,
}

impl<B: Backend> Embedding<B> {
    /// A frozen table kept on the device.
    pub fn on_device(weight: Tensor<B, 2>) -> Self {
        Self { weight: Some(Param::from_tensor(weight).set_require_grad(false)), host: None }
    }

    /// A frozen table kept in host memory, converted once to the backend's float dtype.
    pub fn on_host(data: TensorData) -> Self {
        let [vocab, hidden] = [data.shape[0], data.shape[1]];
        let dtype = <B::FloatElem as Element>::dtype();
        let bytes = data.convert_dtype(dtype).into_bytes().to_vec();
        Self { weight: None, host: Some(HostTable { bytes: Arc::new(bytes), dtype, vocab, hidden }) }
    }

    /// `[vocab, hidden]`.
    pub fn dims(&self) -> [usize; 2] {
        match (&self.weight, &self.host) {
            (Some(w), _) => w.val().dims(),
            (None, Some(h)) => [h.vocab, h.hidden],
            (None, None) => unreachable!("an Embedding is built with a device or a host table"),
        }
    }

    /// Bytes the table occupies on the device (0 when it lives in host memory).
    pub fn device_bytes(&self) -> usize {
        self.weight.as_ref().map_or(0, |w| w.val().shape().num_elements() * w.val().dtype().size())
    }

    /// The device table, when it lives there (the tied head multiplies by it).
    pub fn device_weight(&self) -> Option<Tensor<B, 2>> {
        self.weight.as_ref().map(|w| w.val())
    }

    /// `ids: [batch, seq] -> [batch, seq, hidden]` on `ids`' device. Ids must be below the
    /// vocabulary size (the tokenizer's ids are; the host path checks and panics otherwise,
    /// as the device gather would read out of bounds).
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [b, s] = ids.dims();
        if let Some(w) = &self.weight {
            let w = w.val();
            let hidden = w.dims()[1];
            return w.select(0, ids.reshape([b * s])).reshape([b, s, hidden]);
        }
        let device = ids.device();
        let ids = ids.into_data().convert::<i64>().to_vec::<i64>().expect("converted to i64");
        self.lookup(&ids, [b, s], &device)
    }

    /// [`Self::forward`] for ids already in host memory (no device read-back).
    pub fn lookup(&self, ids: &[i64], [b, s]: [usize; 2], device: &B::Device) -> Tensor<B, 3> {
        let Some(h) = &self.host else {
            let t = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), [b, s]), device);
            return self.forward(t);
        };
        let row = h.hidden * h.dtype.size();
        let mut out = Vec::with_capacity(ids.len() * row);
        for &id in ids {
            let id = usize::try_from(id).ok().filter(|&i| i < h.vocab);
            let id = id.unwrap_or_else(|| panic!("token id outside the vocabulary of {} rows", h.vocab));
            out.extend_from_slice(&h.bytes[id * row..(id + 1) * row]);
        }
        Tensor::from_data(TensorData::from_bytes_vec(out, [b, s, h.hidden], h.dtype), device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;

    #[test]
    fn host_rows_equal_the_device_gather() {
        let device = Default::default();
        let w = Tensor::<NdArray, 2>::random([37, 6], Distribution::Normal(0.0, 1.0), &device);
        let dev = Embedding::on_device(w.clone());
        let host = Embedding::<NdArray>::on_host(w.into_data());
        assert_eq!(host.device_bytes(), 0);
        assert_eq!(host.dims(), [37, 6]);
        let ids: Vec<i64> = (0..10).map(|i| (i * 13 + 5) % 37).collect();
        let t = Tensor::<NdArray, 2, Int>::from_data(TensorData::new(ids.clone(), [2, 5]), &device);
        let a = dev.forward(t.clone()).into_data();
        let b = host.forward(t).into_data();
        let c = host.lookup(&ids, [2, 5], &device).into_data();
        assert_eq!(a.shape.dims::<3>(), [2, 5, 6]);
        assert_eq!(a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        assert_eq!(a.as_slice::<f32>().unwrap(), c.as_slice::<f32>().unwrap());
    }
}
