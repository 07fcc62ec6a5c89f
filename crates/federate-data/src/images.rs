//! Image folders, torchvision's `ImageFolder` convention: one subdirectory per class, holding
//! that class's PNG or JPEG files. Class `k` is the `k`-th name of the declared classes, or
//! of the subdirectories sorted by name. Every image is decoded with the `image` crate (sizes
//! and allocations bounded), converted to grey or RGB, resized to the declared shape
//! (bilinear) when it differs, and scaled to [0, 1], channels last — what the IDX datasets
//! give for the same pixels.

use std::path::{Path, PathBuf};

use crate::{DataError, Dataset, TrainTest};

/// Largest width or height of an image read.
pub const MAX_SIDE: u32 = 16_384;
/// Largest number of pixel values held (all images together).
pub const MAX_VALUES: usize = 1 << 31;

/// A folder of class subdirectories.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// The folder.
    pub root: PathBuf,
    /// Height, width, channels (1: grey, 3: RGB) every image is brought to.
    pub shape: [usize; 3],
    /// The class names, class 0 first (default: the subdirectories, sorted).
    pub classes: Option<Vec<String>>,
}

fn err(path: &Path, problem: String) -> DataError {
    DataError::table(path, problem)
}

fn is_image(p: &Path) -> bool {
    let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// The entries of `dir` sorted by name, directories or files as asked (hidden ones skipped).
fn entries(dir: &Path, dirs: bool) -> Result<Vec<PathBuf>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .filter(|p| p.is_dir() == dirs)
        .collect();
    out.sort();
    Ok(out)
}

impl ImageFolder {
    /// The classes: the declared ones, else the subdirectories' names sorted.
    pub fn class_names(&self) -> Result<Vec<String>, DataError> {
        if !self.root.is_dir() {
            return Err(err(&self.root, "no such folder: give the folder of class subdirectories (data.path)".into()));
        }
        if let Some(c) = &self.classes {
            return Ok(c.clone());
        }
        let names: Vec<String> = entries(&self.root, true)?
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
            .collect();
        if names.is_empty() {
            return Err(err(
                &self.root,
                "no class subdirectories: put each class's images in a folder named after it".into(),
            ));
        }
        Ok(names)
    }

    /// Reads every image, class by class, files in name order.
    pub fn read(&self) -> Result<Dataset, DataError> {
        let [h, w, c] = self.shape;
        if !(c == 1 || c == 3) || h == 0 || w == 0 || h > MAX_SIDE as usize || w > MAX_SIDE as usize {
            return Err(err(&self.root, format!("shape [{h}, {w}, {c}]: give [height, width, 1 or 3 channels]")));
        }
        let classes = self.class_names()?;
        for d in entries(&self.root, true)? {
            let name = d.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if !classes.contains(&name) {
                return Err(err(
                    &d,
                    format!(
                        "the folder '{name}' is not one of the classes [{}]: add it to the classes or move it",
                        classes.join(", ")
                    ),
                ));
            }
        }
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for (k, class) in classes.iter().enumerate() {
            let dir = self.root.join(class);
            if !dir.is_dir() {
                continue; // this party holds no image of the class
            }
            for file in entries(&dir, false)?.into_iter().filter(|p| is_image(p)) {
                if x.len() + h * w * c > MAX_VALUES {
                    return Err(err(
                        &self.root,
                        format!("more than {MAX_VALUES} pixel values: use fewer or smaller images"),
                    ));
                }
                decode_into(&file, self.shape, &mut x)?;
                y.push(k as u32);
            }
        }
        if y.is_empty() {
            return Err(err(&self.root, "no PNG or JPEG images in the class folders".into()));
        }
        Ok(Dataset::classification(x, y, self.shape, classes.len()))
    }

    /// The training and test sets: `root/train` and `root/test` when both exist (the same
    /// classes), else `None` (the caller holds out a share of `read()`).
    pub fn train_test(&self) -> Result<Option<TrainTest>, DataError> {
        let (tr, te) = (self.root.join("train"), self.root.join("test"));
        if !(tr.is_dir() && te.is_dir()) {
            return Ok(None);
        }
        let classes = Some(match &self.classes {
            Some(c) => c.clone(),
            None => ImageFolder { root: tr.clone(), ..self.clone() }.class_names()?,
        });
        let train = ImageFolder { root: tr, shape: self.shape, classes: classes.clone() }.read()?;
        let test = ImageFolder { root: te, shape: self.shape, classes }.read()?;
        Ok(Some(TrainTest { train, test }))
    }
}

/// Decodes one image into `out` as `shape` (grey or RGB, resized if needed, in [0, 1]).
fn decode_into(file: &Path, shape: [usize; 3], out: &mut Vec<f32>) -> Result<(), DataError> {
    let [h, w, c] = shape;
    let bad = |e: String| err(file, format!("not a readable image ({e}): replace or remove the file"));
    let mut reader = image::ImageReader::open(file).map_err(|e| DataError::io(file, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let img = reader.with_guessed_format().map_err(|e| bad(e.to_string()))?.decode().map_err(|e| bad(e.to_string()))?;
    let resize = img.width() as usize != w || img.height() as usize != h;
    let filter = image::imageops::FilterType::Triangle;
    if c == 1 {
        let g = img.to_luma8();
        let g = if resize { image::imageops::resize(&g, w as u32, h as u32, filter) } else { g };
        out.extend(g.as_raw().iter().map(|&p| p as f32 / 255.0));
    } else {
        let g = img.to_rgb8();
        let g = if resize { image::imageops::resize(&g, w as u32, h as u32, filter) } else { g };
        out.extend(g.as_raw().iter().map(|&p| p as f32 / 255.0));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
        let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]));
        img.save(path).unwrap();
    }

    #[test]
    fn class_folders_become_labels_and_pixels_are_exact() {
        let dir = tempfile::tempdir().unwrap();
        for (class, shade) in [("coat", 10u8), ("shirt", 200)] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            for i in 0..3u8 {
                png(&dir.path().join(class).join(format!("{i}.png")), 4, 2, |x, y| shade + i + (x + 4 * y) as u8);
            }
        }
        std::fs::write(dir.path().join("coat/notes.txt"), "not an image").unwrap();
        let f = ImageFolder { root: dir.path().into(), shape: [2, 4, 1], classes: None };
        let d = f.read().unwrap();
        assert_eq!(d.y, [0, 0, 0, 1, 1, 1]);
        assert_eq!(d.classes, 2);
        assert_eq!(d.x[8], 11.0 / 255.0, "second coat image, first pixel");
        assert_eq!(d.x[8 * 3 + 7], (200.0 + 7.0) / 255.0);
        // Resized to a declared shape, in RGB.
        let f = ImageFolder { root: dir.path().into(), shape: [4, 8, 3], classes: None };
        assert_eq!(f.read().unwrap().x.len(), 6 * 4 * 8 * 3);
    }

    #[test]
    fn bad_folders_and_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cat")).unwrap();
        png(&dir.path().join("cat/a.png"), 2, 2, |_, _| 1);
        let corrupt = dir.path().join("cat/b.png");
        std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nthis is not the rest of a PNG").unwrap();
        let f = ImageFolder { root: dir.path().into(), shape: [2, 2, 1], classes: None };
        let e = f.read().unwrap_err().to_string();
        assert!(e.starts_with(&format!("{}: not a readable image (", corrupt.display())), "{e}");
        assert!(e.ends_with("): replace or remove the file"), "{e}");
        std::fs::remove_file(&corrupt).unwrap();
        std::fs::create_dir_all(dir.path().join("dog")).unwrap();
        let f = ImageFolder { root: dir.path().into(), shape: [2, 2, 1], classes: Some(vec!["cat".into()]) };
        let e = f.read().unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: the folder 'dog' is not one of the classes [cat]: add it to the classes or move it",
                dir.path().join("dog").display()
            )
        );
        let empty = tempfile::tempdir().unwrap();
        let f = ImageFolder { root: empty.path().into(), shape: [2, 2, 1], classes: None };
        assert!(f.read().unwrap_err().to_string().contains("no class subdirectories"));
    }
}
