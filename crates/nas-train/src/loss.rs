//! Losses and the finiteness check every training loop applies to them.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};

/// Cross-entropy of `logits` `[n, classes]` against `labels` `[n]`, with label smoothing
/// `eps` as PyTorch's `label_smoothing` (and DARTS's ImageNet `CrossEntropyLabelSmooth`):
/// the target puts `1 - eps` on the label and `eps / classes` on every class.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, eps: f64) -> Result<Tensor> {
    if !(0.0..1.0).contains(&eps) {
        return Err(Error::Invalid(format!(
            "label smoothing must be in [0, 1), got {eps}"
        )));
    }
    let log_p = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = candle_nn::loss::nll(&log_p, labels)?;
    if eps == 0.0 {
        return Ok(nll);
    }
    let uniform = log_p.mean(D::Minus1)?.mean_all()?.neg()?;
    Ok(((nll * (1.0 - eps))? + (uniform * eps)?)?)
}

/// The value of a scalar tensor.
pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// An error naming `what`, its value, the epoch and the step when `value` is NaN or
/// infinite.
pub fn ensure_finite(what: &str, value: f64, epoch: usize, step: usize) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite {
            what: what.to_string(),
            value,
            epoch,
            step,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Worked by hand: logits (0, ln 3) give p = (1/4, 3/4).
    #[test]
    fn smoothed_cross_entropy_matches_a_hand_computed_value() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[0.0f64, 3f64.ln()]], &dev).unwrap();
        let labels = Tensor::new(&[1u32], &dev).unwrap();
        let plain = scalar(&cross_entropy(&logits, &labels, 0.0).unwrap()).unwrap();
        assert!((plain - (4.0f64 / 3.0).ln()).abs() < 1e-12);
        // 0.9 * -ln(3/4) + 0.1 * (-(ln(1/4) + ln(3/4)) / 2)
        let want = 0.9 * -(0.75f64.ln()) + 0.1 * -((0.25f64).ln() + 0.75f64.ln()) / 2.0;
        let got = scalar(&cross_entropy(&logits, &labels, 0.1).unwrap()).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert!(ensure_finite("loss", f64::NAN, 2, 3)
            .unwrap_err()
            .to_string()
            .contains("epoch 2, step 3"));
    }
}
