//! An in-memory image classification set: `n` images of `channels x height x width` bytes.

use crate::error::{Error, Result};

/// Images as bytes in `[n, channels, height, width]` order, with one label each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    pixels: Vec<u8>,
    labels: Vec<u32>,
    shape: [usize; 3],
    classes: usize,
    max_value: u8,
}

impl ImageSet {
    /// Checks that the pixels hold exactly one image per label and that labels are below
    /// `classes`. `max_value` is the largest pixel value of the format (255, or 16 for digits).
    pub fn new(
        pixels: Vec<u8>,
        labels: Vec<u32>,
        shape: [usize; 3],
        classes: usize,
        max_value: u8,
    ) -> Result<Self> {
        let size: usize = shape.iter().product();
        if pixels.len() != labels.len() * size {
            return Err(Error::Invalid(format!(
                "{} labels need {} pixel bytes of shape {shape:?}, got {}",
                labels.len(),
                labels.len() * size,
                pixels.len()
            )));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= classes)
        {
            return Err(Error::Invalid(format!(
                "label {l} of image {i} is not below {classes} classes"
            )));
        }
        Ok(ImageSet {
            pixels,
            labels,
            shape,
            classes,
            max_value,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `[channels, height, width]`.
    pub fn shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The largest pixel value of the format.
    pub fn max_value(&self) -> u8 {
        self.max_value
    }

    /// All labels.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The pixels of image `i`, `[channels, height, width]`.
    pub fn image(&self, i: usize) -> &[u8] {
        let size: usize = self.shape.iter().product();
        &self.pixels[i * size..(i + 1) * size]
    }

    /// How many images each class has.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// The images at `indices`, in that order.
    pub fn subset(&self, indices: &[usize]) -> Result<ImageSet> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(Error::Invalid(format!(
                "index {bad} is out of range for {} images",
                self.len()
            )));
        }
        let mut pixels = Vec::with_capacity(indices.len() * self.image(0).len());
        for &i in indices {
            pixels.extend_from_slice(self.image(i));
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        ImageSet::new(pixels, labels, self.shape, self.classes, self.max_value)
    }

    /// Per-channel mean and standard deviation of the pixels scaled to `[0, 1]`.
    pub fn channel_stats(&self) -> Vec<(f64, f64)> {
        let [c, h, w] = self.shape;
        let plane = h * w;
        let scale = self.max_value as f64;
        (0..c)
            .map(|ch| {
                let (mut sum, mut sq, mut count) = (0.0f64, 0.0f64, 0usize);
                for i in 0..self.len() {
                    for &p in &self.image(i)[ch * plane..(ch + 1) * plane] {
                        let v = p as f64 / scale;
                        sum += v;
                        sq += v * v;
                        count += 1;
                    }
                }
                let mean = sum / count.max(1) as f64;
                (
                    mean,
                    (sq / count.max(1) as f64 - mean * mean).max(0.0).sqrt(),
                )
            })
            .collect()
    }
}
