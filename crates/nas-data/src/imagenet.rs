//! ImageNet as an ImageFolder tree (`<split>/<class folder>/<image>.JPEG`), decoded with
//! zune-jpeg, with the papers' transforms: for training RandomResizedCrop 224 (scale
//! 0.08..1, aspect 3/4..4/3, as torchvision draws it), horizontal flip and colour jitter
//! (brightness, contrast, saturation 0.4, hue 0.2, in random order); for evaluation a
//! resize of the shorter side to 256 and a centre crop of 224.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::Rng;
use rayon::prelude::*;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::error::{Error, Result};

/// ImageNet's per-channel mean of pixels in `[0, 1]`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// A decoded RGB image, row-major `[h, w, 3]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb {
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Interleaved RGB bytes.
    pub pixels: Vec<u8>,
}

/// The files of one split: class folders sorted by name give the labels.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    classes: Vec<String>,
    samples: Vec<(PathBuf, u32)>,
}

impl ImageFolder {
    /// Scans `root` (e.g. `imagenet/val`): every sub-folder is a class, every file in it
    /// with a JPEG extension an image.
    pub fn scan(root: &Path) -> Result<Self> {
        let read = |dir: &Path| std::fs::read_dir(dir).map_err(|e| Error::io(dir, e));
        let mut classes: Vec<String> = read(root)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        classes.sort();
        if classes.is_empty() {
            return Err(Error::Invalid(format!("{root:?} has no class folders")));
        }
        let mut samples = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let mut files: Vec<PathBuf> = read(&root.join(class))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_jpeg(p))
                .collect();
            files.sort();
            samples.extend(files.into_iter().map(|f| (f, label as u32)));
        }
        Ok(ImageFolder { classes, samples })
    }

    /// Class folder names, in label order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// `(file, label)` pairs.
    pub fn samples(&self) -> &[(PathBuf, u32)] {
        &self.samples
    }

    /// Decodes the images at `indices` in parallel and transforms each to normalised f32
    /// `[3, 224, 224]`; `train` picks the training transform, drawn from `seeds[k]`.
    pub fn batch(&self, indices: &[usize], train: bool, seeds: &[u64]) -> Result<Vec<f32>> {
        const SIZE: usize = 224 * 224 * 3;
        let mut out = vec![0f32; indices.len() * SIZE];
        out.par_chunks_mut(SIZE)
            .zip(indices.par_iter().zip(seeds.par_iter()))
            .try_for_each(|(dst, (&i, &seed))| -> Result<()> {
                let (path, _) = self.samples.get(i).ok_or_else(|| {
                    Error::Invalid(format!(
                        "index {i} is out of range for {} images",
                        self.samples.len()
                    ))
                })?;
                let img = decode(path)?;
                let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
                let t = if train {
                    train_transform(&img, &mut rng)
                } else {
                    eval_transform(&img)
                };
                dst.copy_from_slice(&t);
                Ok(())
            })?;
        Ok(out)
    }
}

/// Which of the papers' transforms a batch gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// RandomResizedCrop 224, horizontal flip, colour jitter, normalisation.
    Train,
    /// Resize the shorter side to 256, centre crop 224, normalisation.
    Eval,
}

/// True for a file name with a JPEG extension (`.jpg`, `.jpeg`, any case).
pub(crate) fn is_jpeg(path: &Path) -> bool {
    path.extension()
        .is_some_and(|x| ["jpg", "jpeg"].contains(&x.to_string_lossy().to_lowercase().as_str()))
}

/// Decodes a JPEG file to RGB.
pub fn decode(path: &Path) -> Result<Rgb> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let options = DecoderOptions::default().jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(&bytes, options);
    let pixels = decoder
        .decode()
        .map_err(|e| Error::format(path, "JPEG stream", format!("a decodable JPEG ({e:?})")))?;
    let (width, height) = decoder
        .dimensions()
        .ok_or_else(|| Error::format(path, "JPEG header", "image dimensions"))?;
    if pixels.len() != width * height * 3 {
        return Err(Error::format(
            path,
            "JPEG stream",
            format!("{width}x{height} RGB pixels, got {} bytes", pixels.len()),
        ));
    }
    Ok(Rgb {
        height,
        width,
        pixels,
    })
}

/// Bilinear resampling of the crop `(top, left, h, w)` (in source pixels, fractional
/// allowed) to `out_h x out_w`, normalised, as `[3, out_h, out_w]`; `flip` mirrors it.
fn resample(
    img: &Rgb,
    crop: (f64, f64, f64, f64),
    out_h: usize,
    out_w: usize,
    flip: bool,
) -> Vec<f32> {
    let (top, left, ch, cw) = crop;
    let mut out = vec![0f32; 3 * out_h * out_w];
    let (sy, sx) = (ch / out_h as f64, cw / out_w as f64);
    for y in 0..out_h {
        // Pixel centres, as torchvision's antialias-free bilinear resize.
        let fy = (top + (y as f64 + 0.5) * sy - 0.5).clamp(0.0, (img.height - 1) as f64);
        let (y0, wy) = (fy.floor() as usize, (fy - fy.floor()) as f32);
        let y1 = (y0 + 1).min(img.height - 1);
        for x in 0..out_w {
            let fx = (left + (x as f64 + 0.5) * sx - 0.5).clamp(0.0, (img.width - 1) as f64);
            let (x0, wx) = (fx.floor() as usize, (fx - fx.floor()) as f32);
            let x1 = (x0 + 1).min(img.width - 1);
            let ox = if flip { out_w - 1 - x } else { x };
            for c in 0..3 {
                let p = |yy: usize, xx: usize| img.pixels[(yy * img.width + xx) * 3 + c] as f32;
                let top_row = p(y0, x0) * (1.0 - wx) + p(y0, x1) * wx;
                let bottom = p(y1, x0) * (1.0 - wx) + p(y1, x1) * wx;
                out[c * out_h * out_w + y * out_w + ox] =
                    (top_row * (1.0 - wy) + bottom * wy) / 255.0;
            }
        }
    }
    out
}

fn normalise(t: &mut [f32], hw: usize) {
    for c in 0..3 {
        for v in &mut t[c * hw..(c + 1) * hw] {
            *v = (*v - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: up to 10 draws of scale and log-uniform
/// aspect ratio, then a centre crop clamped to the allowed ratios.
fn random_resized_crop(h: usize, w: usize, rng: &mut impl Rng) -> (f64, f64, f64, f64) {
    let area = (h * w) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..=1.0);
        let ratio = rng.random_range(lo..=hi).exp();
        let cw = (target * ratio).sqrt().round();
        let ch = (target / ratio).sqrt().round();
        if cw > 0.0 && ch > 0.0 && cw <= w as f64 && ch <= h as f64 {
            let top = rng.random_range(0..=(h - ch as usize)) as f64;
            let left = rng.random_range(0..=(w - cw as usize)) as f64;
            return (top, left, ch, cw);
        }
    }
    let ratio = w as f64 / h as f64;
    let (ch, cw) = if ratio < 3.0 / 4.0 {
        ((w as f64 * 4.0 / 3.0).round(), w as f64)
    } else if ratio > 4.0 / 3.0 {
        (h as f64, (h as f64 * 4.0 / 3.0).round())
    } else {
        (h as f64, w as f64)
    };
    (
        ((h as f64 - ch) / 2.0).floor(),
        ((w as f64 - cw) / 2.0).floor(),
        ch,
        cw,
    )
}

/// Colour jitter on `[3, h, w]` values in `[0, 1]`: brightness, contrast and saturation
/// factors in `[0.6, 1.4]` and a hue shift in `[-0.2, 0.2]` turns, in random order.
fn color_jitter(t: &mut [f32], hw: usize, rng: &mut impl Rng) {
    let mut order = [0, 1, 2, 3];
    order.shuffle(rng);
    let gray = |t: &[f32], i: usize| 0.299 * t[i] + 0.587 * t[hw + i] + 0.114 * t[2 * hw + i];
    for step in order {
        match step {
            0 => {
                let f = rng.random_range(0.6f32..=1.4);
                t.iter_mut().for_each(|v| *v = (*v * f).clamp(0.0, 1.0));
            }
            1 => {
                let f = rng.random_range(0.6f32..=1.4);
                let mean = (0..hw).map(|i| gray(t, i)).sum::<f32>() / hw as f32;
                t.iter_mut()
                    .for_each(|v| *v = (mean + f * (*v - mean)).clamp(0.0, 1.0));
            }
            2 => {
                let f = rng.random_range(0.6f32..=1.4);
                for i in 0..hw {
                    let g = gray(t, i);
                    for c in 0..3 {
                        t[c * hw + i] = (g + f * (t[c * hw + i] - g)).clamp(0.0, 1.0);
                    }
                }
            }
            _ => {
                let shift = rng.random_range(-0.2f32..=0.2);
                for i in 0..hw {
                    let (h, s, v) = rgb_to_hsv(t[i], t[hw + i], t[2 * hw + i]);
                    let (r, g, b) = hsv_to_rgb((h + shift).rem_euclid(1.0), s, v);
                    (t[i], t[hw + i], t[2 * hw + i]) = (r, g, b);
                }
            }
        }
    }
}

fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    let h = if d == 0.0 {
        0.0
    } else if max == r {
        ((g - b) / d).rem_euclid(6.0) / 6.0
    } else if max == g {
        ((b - r) / d + 2.0) / 6.0
    } else {
        ((r - g) / d + 4.0) / 6.0
    };
    let s = if max == 0.0 { 0.0 } else { d / max };
    (h, s, max)
}

fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let i = (h * 6.0).floor();
    let f = h * 6.0 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - f * s), v * (1.0 - (1.0 - f) * s));
    match (i as i32).rem_euclid(6) {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// The training transform, normalised `[3, 224, 224]`.
pub fn train_transform(img: &Rgb, rng: &mut impl Rng) -> Vec<f32> {
    let crop = random_resized_crop(img.height, img.width, rng);
    let flip = rng.random::<bool>();
    let mut t = resample(img, crop, 224, 224, flip);
    color_jitter(&mut t, 224 * 224, rng);
    normalise(&mut t, 224 * 224);
    t
}

/// The evaluation transform: shorter side to 256, centre 224, normalised.
pub fn eval_transform(img: &Rgb) -> Vec<f32> {
    let scale = 256.0 / img.height.min(img.width) as f64;
    // The centre 224 x 224 of the resized image, mapped back to source pixels.
    let side = 224.0 / scale;
    let top = (img.height as f64 - side) / 2.0;
    let left = (img.width as f64 - side) / 2.0;
    let mut t = resample(img, (top, left, side, side), 224, 224, false);
    normalise(&mut t, 224 * 224);
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn sample() -> ImageFolder {
        ImageFolder::scan(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/datasets/imagenet-sample/val"),
        )
        .unwrap()
    }

    #[test]
    fn decodes_and_transforms_the_real_sample() {
        let folder = sample();
        assert_eq!(folder.samples().len(), 20);
        assert_eq!(folder.classes().len(), 19); // two of the images share a class
        let img = decode(&folder.samples()[0].0).unwrap();
        assert_eq!((img.height, img.width), (512, 512));
        // A real photo: not flat.
        let mean = img.pixels.iter().map(|&p| p as f64).sum::<f64>() / img.pixels.len() as f64;
        assert!((10.0..245.0).contains(&mean), "{mean}");
        let idx: Vec<usize> = (0..20).collect();
        let seeds: Vec<u64> = (0..20).collect();
        let eval = folder.batch(&idx, false, &seeds).unwrap();
        assert_eq!(eval.len(), 20 * 3 * 224 * 224);
        assert!(eval.iter().all(|v| v.is_finite() && v.abs() < 3.0));
        let a = folder.batch(&idx[..4], true, &seeds[..4]).unwrap();
        assert_eq!(a, folder.batch(&idx[..4], true, &seeds[..4]).unwrap());
        assert_ne!(a, folder.batch(&idx[..4], true, &[9, 9, 9, 9]).unwrap());
    }

    #[test]
    fn eval_centre_crop_of_a_constant_image_is_constant() {
        let img = Rgb {
            height: 300,
            width: 400,
            pixels: vec![128; 300 * 400 * 3],
        };
        let t = eval_transform(&img);
        let want = (128.0 / 255.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
        assert!((t[0] - want).abs() < 1e-5 && (t[224 * 224 - 1] - want).abs() < 1e-5);
    }

    #[test]
    fn crops_stay_inside_and_hsv_round_trips() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let (top, left, h, w) = random_resized_crop(375, 500, &mut rng);
            assert!(top >= 0.0 && left >= 0.0 && top + h <= 375.0 && left + w <= 500.0);
            let ratio = w / h;
            assert!((0.7..=1.4).contains(&ratio), "{ratio}");
        }
        for (r, g, b) in [(0.2, 0.5, 0.9), (1.0, 0.0, 0.0), (0.3, 0.3, 0.3)] {
            let (h, s, v) = rgb_to_hsv(r, g, b);
            let (r2, g2, b2) = hsv_to_rgb(h, s, v);
            assert!((r - r2).abs() < 1e-6 && (g - g2).abs() < 1e-6 && (b - b2).abs() < 1e-6);
        }
    }

    #[test]
    fn corrupt_jpeg_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("n01")).unwrap();
        let bytes = std::fs::read(&sample().samples()[0].0).unwrap();
        std::fs::write(dir.path().join("n01/a.jpg"), &bytes[..200]).unwrap();
        let folder = ImageFolder::scan(dir.path()).unwrap();
        let err = folder.batch(&[0], false, &[0]).unwrap_err().to_string();
        assert!(
            err.contains("a.jpg") && err.contains("a decodable JPEG"),
            "{err}"
        );
        assert!(ImageFolder::scan(&dir.path().join("n01"))
            .unwrap_err()
            .to_string()
            .contains("no class folders"));
    }
}
