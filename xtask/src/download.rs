//! `cargo xtask download <dataset> [--dir DIR] [--mirror DIR]`: puts a data set into the
//! data directory's layout, verified against the published checksums.
//!
//! Sources: a local mirror folder (`--mirror`, or `NAS_DATA_MIRROR`) laid out as
//! `datasets/README.md` describes. Files are copied (or extracted) to `*.part` names,
//! verified, then renamed, so an interrupted run leaves nothing that looks complete.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nas_data::Dataset;

pub fn run(args: &[&str]) -> Result<()> {
    let mut rest = args.iter();
    let Some(name) = rest.next() else {
        bail!("usage: cargo xtask download <dataset> [--dir DIR] [--mirror DIR]");
    };
    let dataset = Dataset::from_name(name)?;
    let mut dir = std::env::var_os("NAS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("datasets"));
    let mut mirror = std::env::var_os("NAS_DATA_MIRROR").map(PathBuf::from);
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match *flag {
            "--dir" => dir = PathBuf::from(value),
            "--mirror" => mirror = Some(PathBuf::from(value)),
            other => bail!("unknown flag {other:?}; expected --dir or --mirror"),
        }
    }
    let Some(mirror) = mirror else {
        let manifest = crate::project_root().join("datasets/manifest.json");
        let text =
            std::fs::read_to_string(&manifest).with_context(|| format!("reading {manifest:?}"))?;
        let manifest: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {manifest:?}"))?;
        let entry = manifest.get(dataset.name()).with_context(|| {
            format!(
                "{} has no download source in datasets/manifest.json; import it with --mirror DIR",
                dataset.name()
            )
        })?;
        from_network(dataset, entry, &dir)?;
        let info = dataset
            .info(&dir)
            .with_context(|| format!("checking {} in {dir:?}", dataset.name()))?;
        println!("{} is in {}: {:?}", info.name, info.location, info.splits);
        return Ok(());
    };
    let source = mirror.join(dataset.name());
    let target = dataset.folder(&dir);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {target:?}"))?;
    match dataset {
        Dataset::Cifar10 | Dataset::Cifar100 => {
            let archive = source.join(match dataset {
                Dataset::Cifar10 => "cifar-10-binary.tar.gz",
                _ => "cifar-100-binary.tar.gz",
            });
            extract(&archive, &target, None)?;
        }
        _ => {
            let files: &[&str] = match dataset {
                Dataset::Ptb => &["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"],
                Dataset::Wikitext2 => &["wiki.train.txt", "wiki.valid.txt", "wiki.test.txt"],
                Dataset::Digits => &["digits.csv.gz"],
                _ => &[
                    "train-images-idx3-ubyte.gz",
                    "train-labels-idx1-ubyte.gz",
                    "t10k-images-idx3-ubyte.gz",
                    "t10k-labels-idx1-ubyte.gz",
                ],
            };
            for file in files {
                copy_verified(dataset, &source.join(file), &target.join(file))?;
            }
        }
    }
    // Read everything back: counts, labels and formats are checked on the way.
    let info = dataset
        .info(&dir)
        .with_context(|| format!("checking {} in {dir:?}", dataset.name()))?;
    println!("{} is in {}: {:?}", info.name, info.location, info.splits);
    Ok(())
}

/// Copies `from` to `to` through `to.part`, refusing a file whose checksum mismatches.
fn copy_verified(dataset: Dataset, from: &Path, to: &Path) -> Result<()> {
    if !from.exists() {
        bail!("the mirror has no {from:?}");
    }
    let part = part_name(to);
    std::fs::copy(from, &part).with_context(|| format!("copying {from:?} to {part:?}"))?;
    let status = dataset.checksum_status(&part, &file_name(to))?;
    if status.starts_with("mismatch") {
        let _ = std::fs::remove_file(&part);
        bail!("{from:?}: {status}");
    }
    std::fs::rename(&part, to).with_context(|| format!("renaming {part:?} to {to:?}"))?;
    Ok(())
}

/// Downloads a manifest entry (`files`, or an `archive` to extract) into the data set's
/// folder under `dir`.
fn from_network(dataset: Dataset, entry: &serde_json::Value, dir: &Path) -> Result<()> {
    let target = dataset.folder(dir);
    let downloads = dir.join(".downloads");
    std::fs::create_dir_all(&downloads).with_context(|| format!("creating {downloads:?}"))?;
    let field = |v: &serde_json::Value, k: &str| -> Result<String> {
        v.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .with_context(|| format!("manifest entry {v} has no {k:?}"))
    };
    if let Some(archive) = entry.get("archive") {
        let (url, name) = (field(archive, "url")?, field(archive, "name")?);
        let file = downloads.join(&name);
        fetch(&url, &file, archive.get("md5").and_then(|m| m.as_str()))?;
        let members: Option<Vec<String>> =
            archive.get("members").and_then(|m| m.as_array()).map(|m| {
                m.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            });
        extract(&file, &target, members.as_deref())?;
        for member in members.iter().flatten() {
            let status = dataset.checksum_status(&target.join(member), member)?;
            if status.starts_with("mismatch") {
                bail!("{member} from {url}: {status}");
            }
        }
        Ok(())
    } else {
        std::fs::create_dir_all(&target).with_context(|| format!("creating {target:?}"))?;
        let files = entry
            .get("files")
            .and_then(|f| f.as_array())
            .context("manifest entry has no files")?;
        for f in files {
            let (url, name) = (field(f, "url")?, field(f, "name")?);
            let to = target.join(&name);
            fetch(&url, &part_name(&to), f.get("md5").and_then(|m| m.as_str()))?;
            let status = dataset.checksum_status(&part_name(&to), &name)?;
            if status.starts_with("mismatch") {
                let _ = std::fs::remove_file(part_name(&to));
                bail!("{url}: {status}");
            }
            std::fs::rename(part_name(&to), &to)
                .with_context(|| format!("renaming into {to:?}"))?;
        }
        Ok(())
    }
}

/// Downloads `url` to `dest` through `dest.part`, resuming a partial `.part` with an
/// HTTP range request, and checks `md5` when given. A finished, verified `dest` is kept.
fn fetch(url: &str, dest: &Path, md5: Option<&str>) -> Result<()> {
    use std::io::Write;
    let verify = |path: &Path| -> Result<bool> {
        Ok(match md5 {
            Some(want) => nas_data::md5_hex(path, false)? == want,
            None => true,
        })
    };
    if dest.exists() && verify(dest)? {
        return Ok(());
    }
    let part = part_name(dest);
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let mut request = ureq::get(url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = request
        .call()
        .with_context(|| format!("downloading {url}"))?;
    let resumed = have > 0 && response.status() == 206;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .with_context(|| format!("opening {part:?}"))?;
    std::io::copy(&mut response.into_reader(), &mut out)
        .with_context(|| format!("downloading {url} to {part:?}"))?;
    out.flush()?;
    drop(out);
    if !verify(&part)? {
        let _ = std::fs::remove_file(&part);
        bail!(
            "{url}: the download's md5 is not the published {}; removed it, run again",
            md5.unwrap_or_default()
        );
    }
    std::fs::rename(&part, dest).with_context(|| format!("renaming {part:?} to {dest:?}"))?;
    Ok(())
}

/// Extracts a `.tar.gz` into `target` (the archive's top folder stripped), through a
/// `.part` folder renamed at the end.
fn extract(archive: &Path, target: &Path, members: Option<&[String]>) -> Result<()> {
    if !archive.exists() {
        bail!("the mirror has no {archive:?}");
    }
    let part = part_name(target);
    let _ = std::fs::remove_dir_all(&part);
    std::fs::create_dir_all(&part)?;
    let file = std::fs::File::open(archive).with_context(|| format!("opening {archive:?}"))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    for entry in tar
        .entries()
        .with_context(|| format!("reading {archive:?}"))?
    {
        let mut entry = entry.with_context(|| format!("reading {archive:?}"))?;
        let path = entry.path()?.into_owned();
        let Some(name) = path
            .file_name()
            .filter(|_| entry.header().entry_type().is_file())
        else {
            continue;
        };
        if members.is_some_and(|m| !m.iter().any(|k| name.to_string_lossy() == k.as_str())) {
            continue;
        }
        entry
            .unpack(part.join(name))
            .with_context(|| format!("extracting {path:?} from {archive:?}"))?;
    }
    let _ = std::fs::remove_dir_all(target);
    std::fs::rename(&part, target).with_context(|| format!("renaming {part:?} to {target:?}"))?;
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default()
}

fn part_name(p: &Path) -> PathBuf {
    p.with_file_name(format!("{}.part", file_name(p)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CIFAR-10 tarball in the published layout (`cifar-10-batches-bin/*.bin`).
    fn write_tarball(mirror: &Path, records_per_file: usize) {
        let dir = mirror.join("cifar10");
        std::fs::create_dir_all(&dir).unwrap();
        let file = std::fs::File::create(dir.join("cifar-10-binary.tar.gz")).unwrap();
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ));
        let names = [
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
            "test_batch.bin",
        ];
        for (i, name) in names.iter().enumerate() {
            let mut bytes = Vec::new();
            for r in 0..records_per_file {
                bytes.push(((i + r) % 10) as u8);
                bytes.extend(vec![r as u8; 3072]);
            }
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(
                &mut header,
                format!("cifar-10-batches-bin/{name}"),
                &bytes[..],
            )
            .unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
    }

    /// Serves `body` once per connection on a loopback port, honouring a `Range: bytes=N-`
    /// request; `cut` closes the first response after that many bytes.
    fn serve(body: Vec<u8>, connections: usize, cut: Option<usize>) -> String {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for (k, stream) in listener.incoming().take(connections).enumerate() {
                let mut stream = stream.unwrap();
                let mut start = 0usize;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(r) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        start = r.trim().trim_end_matches('-').parse().unwrap();
                    }
                }
                let (status, rest) = if start > 0 {
                    ("206 Partial Content", &body[start..])
                } else {
                    ("200 OK", &body[..])
                };
                let send = if k == 0 {
                    cut.map_or(rest.len(), |c| c.min(rest.len()))
                } else {
                    rest.len()
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&rest[..send]);
            }
        });
        format!("http://{addr}/file")
    }

    #[test]
    fn fetch_resumes_and_verifies_over_loopback() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let md5 = {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x");
            std::fs::write(&p, &body).unwrap();
            nas_data::md5_hex(&p, false).unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("f.bin");
        // The first connection is cut short: the download fails and leaves only a .part.
        let url = serve(body.clone(), 2, Some(30_000));
        assert!(fetch(&url, &dest, Some(&md5)).is_err());
        assert!(!dest.exists());
        assert_eq!(std::fs::metadata(part_name(&dest)).unwrap().len(), 30_000);
        // The second resumes from byte 30,000 and verifies.
        fetch(&url, &dest, Some(&md5)).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        // A wrong checksum removes the download.
        let other = dir.path().join("g.bin");
        let err = fetch(&serve(body, 1, None), &other, Some("00"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("md5") && !other.exists() && !part_name(&other).exists(),
            "{err}"
        );
    }

    #[test]
    fn imports_a_cifar_tarball_and_real_mirror_files() {
        let mirror = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        write_tarball(mirror.path(), 3);
        let (m, d) = (
            mirror.path().to_str().unwrap(),
            data.path().to_str().unwrap(),
        );
        run(&["cifar10", "--dir", d, "--mirror", m]).unwrap();
        let train = Dataset::Cifar10.load_images(data.path(), true).unwrap();
        assert_eq!((train.len(), train.labels()[4]), (15, 2));
        // A corrupt mirror file is refused and leaves nothing behind.
        let bad = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bad.path().join("ptb")).unwrap();
        for split in ["train", "valid", "test"] {
            std::fs::write(bad.path().join(format!("ptb/ptb.{split}.txt")), "x\n").unwrap();
        }
        let err = run(&["ptb", "--dir", d, "--mirror", bad.path().to_str().unwrap()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mismatch (md5"), "{err}");
        let left: Vec<_> = std::fs::read_dir(data.path().join("ptb"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
        // The real mirror passes.
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets");
        run(&["ptb", "--dir", d, "--mirror", shared.to_str().unwrap()]).unwrap();
        assert_eq!(
            Dataset::Ptb.load_corpus(data.path()).unwrap().vocab_size(),
            10_000
        );
    }

    #[test]
    fn network_import_of_a_ptb_archive_keeps_only_its_members() {
        // simple-examples.tgz's layout, with the real PTB files and something else.
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/ptb");
        let mut archive = Vec::new();
        {
            let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
                &mut archive,
                flate2::Compression::fast(),
            ));
            for split in ["train", "valid", "test"] {
                let name = format!("ptb.{split}.txt");
                tar.append_path_with_name(
                    shared.join(&name),
                    format!("simple-examples/data/{name}"),
                )
                .unwrap();
            }
            let mut header = tar::Header::new_gnu();
            header.set_size(3);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, "simple-examples/models/README", &b"abc"[..])
                .unwrap();
            tar.into_inner().unwrap().finish().unwrap();
        }
        let url = serve(archive, 1, None);
        let entry = serde_json::json!({"archive": {"url": url, "name": "simple-examples.tgz",
            "members": ["ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"]}});
        let dir = tempfile::tempdir().unwrap();
        from_network(Dataset::Ptb, &entry, dir.path()).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path().join("ptb"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["ptb.test.txt", "ptb.train.txt", "ptb.valid.txt"]);
        assert_eq!(
            Dataset::Ptb.load_corpus(dir.path()).unwrap().train().len(),
            929_589
        );
    }
}
