//! `cargo xtask download <dataset> [--dir DIR] [--mirror DIR] [--from PATH]`: puts a data
//! set into the data directory's layout, verified against the published checksums.
//!
//! Sources: the official URLs of `datasets/manifest.json` (downloaded here, through
//! resumable `*.part` files), a local mirror folder (`--mirror`, or `NAS_DATA_MIRROR`)
//! laid out as `datasets/README.md` describes, or, for ImageNet, which cannot be
//! downloaded, an ImageFolder tree or a tar of one (`--from`). Extraction, mirror copies
//! and the ImageNet import are `nas_data::import` (shared with `nas data fetch`); only the
//! network code lives here.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nas_data::import::{self, part_name};
use nas_data::Dataset;

const USAGE: &str =
    "usage: cargo xtask download <dataset> [--dir DIR] [--mirror DIR [--md5 HEX]] [--from PATH]";

pub fn run(args: &[&str]) -> Result<()> {
    let mut rest = args.iter();
    let Some(name) = rest.next() else {
        bail!("{USAGE}");
    };
    let dataset = Dataset::from_name(name)?;
    let mut dir = std::env::var_os("NAS_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("datasets"));
    let mut mirror = std::env::var_os("NAS_DATA_MIRROR").map(PathBuf::from);
    let mut from = None;
    let mut md5 = None;
    while let Some(flag) = rest.next() {
        let value = rest
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match *flag {
            "--dir" => dir = PathBuf::from(value),
            "--mirror" => mirror = Some(PathBuf::from(value)),
            "--from" => from = Some(PathBuf::from(value)),
            "--md5" => md5 = Some(value.to_string()),
            other => bail!("unknown flag {other:?}; {USAGE}"),
        }
    }
    if dataset == Dataset::Imagenet {
        let Some(from) = from else {
            bail!(
                "ImageNet cannot be downloaded (image-net.org hands it out only to registered \
                 users): get ILSVRC 2012 there, lay it out as an ImageFolder tree \
                 (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG), then pass that folder or a .tar of \
                 it with --from: `cargo xtask download imagenet --from <folder or .tar> [--dir DIR]`"
            );
        };
        let found = import::import_imagenet(&from, &dir)
            .with_context(|| format!("importing ImageNet from {from:?}"))?;
        println!(
            "imagenet is in {}: {} classes, train {} images, val {} images ({} other files left out)",
            Dataset::Imagenet.folder(&dir).display(),
            found.classes,
            found.train,
            found.val,
            found.skipped
        );
        return Ok(());
    }
    if md5.is_some() && mirror.is_none() {
        bail!("--md5 vouches for a mirror's re-packed archive; it needs --mirror DIR");
    }
    if from.is_some() {
        bail!("--from is for imagenet only; {name} comes from its official source or --mirror DIR");
    }
    match mirror {
        Some(mirror) => import::from_mirror_with(dataset, &mirror, &dir, md5.as_deref())
            .with_context(|| format!("importing {name} from the mirror {mirror:?}"))?,
        None => {
            let manifest = crate::project_root().join("datasets/manifest.json");
            let text = std::fs::read_to_string(&manifest)
                .with_context(|| format!("reading {manifest:?}"))?;
            let manifest: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("parsing {manifest:?}"))?;
            let entry = manifest.get(dataset.name()).with_context(|| {
                format!(
                    "{name} has no download source in datasets/manifest.json; import it with --mirror DIR"
                )
            })?;
            from_network(dataset, entry, &dir)?;
        }
    }
    // Read everything back: counts, labels and formats are checked on the way.
    let info = dataset
        .info(&dir)
        .with_context(|| format!("checking {name} in {dir:?}"))?;
    println!("{} is in {}: {:?}", info.name, info.location, info.splits);
    Ok(())
}

/// Downloads a manifest entry (`files`, or an `archive` to extract) into the data set's
/// folder under `dir`. An `md5` that is absent or null is not checked (the members'
/// own published checksums, and reading the set back, still are).
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
        let members: Option<Vec<&str>> = archive
            .get("members")
            .and_then(|m| m.as_array())
            .map(|m| m.iter().filter_map(|x| x.as_str()).collect());
        import::extract_archive(&file, &target, members.as_deref())
            .with_context(|| format!("extracting {file:?}"))?;
        for member in members.iter().flatten() {
            dataset
                .verify(&target.join(member), member)
                .with_context(|| format!("{member} from {url}"))?;
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
            if let Err(e) = dataset.verify(&part_name(&to), &name) {
                let _ = std::fs::remove_file(part_name(&to));
                return Err(e).with_context(|| format!("downloaded from {url}"));
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
        // Not the published archive: refused by its md5.
        let err = format!(
            "{:#}",
            run(&["cifar10", "--dir", d, "--mirror", m]).unwrap_err()
        );
        assert!(err.contains("mismatch (md5"), "{err}");
        // Vouched for with --md5, it imports.
        let tarball = mirror.path().join("cifar10/cifar-10-binary.tar.gz");
        let md5 = nas_data::md5_hex(&tarball, false).unwrap();
        run(&["cifar10", "--dir", d, "--mirror", m, "--md5", &md5]).unwrap();
        let train = Dataset::Cifar10.load_images(data.path(), true).unwrap();
        assert_eq!((train.len(), train.labels()[4]), (15, 2));
        // A corrupt mirror file is refused and leaves nothing behind.
        let bad = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(bad.path().join("ptb")).unwrap();
        for split in ["train", "valid", "test"] {
            std::fs::write(bad.path().join(format!("ptb/ptb.{split}.txt")), "x\n").unwrap();
        }
        let err = format!(
            "{:#}",
            run(&["ptb", "--dir", d, "--mirror", bad.path().to_str().unwrap()]).unwrap_err()
        );
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

    /// `wikitext-2-v1.zip` as published (a `wikitext-2/` folder with the three token
    /// files, plus the other members of the real archive's kind), with PTB's text.
    fn wikitext_zip() -> Vec<u8> {
        use std::io::Write;
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/ptb");
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.add_directory("wikitext-2/", opts).unwrap();
        for split in ["train", "valid", "test"] {
            zip.start_file(format!("wikitext-2/wiki.{split}.tokens"), opts)
                .unwrap();
            zip.write_all(&std::fs::read(shared.join(format!("ptb.{split}.txt"))).unwrap())
                .unwrap();
        }
        zip.start_file("wikitext-2/README", opts).unwrap();
        zip.write_all(b"not a member").unwrap();
        zip.finish().unwrap().into_inner()
    }

    fn md5_of(bytes: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, bytes).unwrap();
        nas_data::md5_hex(&p, false).unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn imports_wikitext2_zip_from_a_mirror_and_over_loopback() {
        let zip = wikitext_zip();
        let want = ["wiki.test.tokens", "wiki.train.tokens", "wiki.valid.tokens"];
        // From a mirror.
        let mirror = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(mirror.path().join("wikitext2")).unwrap();
        std::fs::write(mirror.path().join("wikitext2/wikitext-2-v1.zip"), &zip).unwrap();
        let data = tempfile::tempdir().unwrap();
        let d = data.path().to_str().unwrap();
        let zip_md5 = md5_of(&zip);
        run(&[
            "wikitext2",
            "--dir",
            d,
            "--mirror",
            mirror.path().to_str().unwrap(),
            "--md5",
            &zip_md5,
        ])
        .unwrap();
        assert_eq!(names(&data.path().join("wikitext2")), want);
        let c = Dataset::Wikitext2.load_corpus(data.path()).unwrap();
        assert_eq!((c.vocab_size(), c.train().len()), (10_000, 929_589));
        // Over HTTP, with the manifest's entry pointed at a loopback server.
        let text =
            std::fs::read_to_string(crate::project_root().join("datasets/manifest.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut entry = manifest["wikitext2"].clone();
        assert_eq!(
            entry["archive"]["url"],
            "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip"
        );
        assert_eq!(entry["archive"]["members"], serde_json::json!(want_order()));
        entry["archive"]["url"] = serde_json::json!(serve(zip.clone(), 1, None));
        entry["archive"]["md5"] = serde_json::json!(md5_of(&zip));
        let net = tempfile::tempdir().unwrap();
        from_network(Dataset::Wikitext2, &entry, net.path()).unwrap();
        assert_eq!(names(&net.path().join("wikitext2")), want);
        assert_eq!(
            Dataset::Wikitext2
                .load_corpus(net.path())
                .unwrap()
                .test()
                .len(),
            82_430
        );
        // A download whose md5 is not the manifest's is removed, and extracts nothing.
        entry["archive"]["url"] = serde_json::json!(serve(zip.clone(), 1, None));
        entry["archive"]["md5"] = serde_json::json!("542ccefacc6c27f945fb54453812b3cd");
        let other = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            from_network(Dataset::Wikitext2, &entry, other.path()).unwrap_err()
        );
        assert!(err.contains("is not the published"), "{err}");
        assert!(!other.path().join("wikitext2").exists());
        assert!(names(&other.path().join(".downloads")).is_empty());
        // A null md5 is not checked: the archive is verified by its format only.
        entry["archive"]["url"] = serde_json::json!(serve(zip, 1, None));
        entry["archive"]["md5"] = serde_json::Value::Null;
        from_network(Dataset::Wikitext2, &entry, other.path()).unwrap();
        assert_eq!(names(&other.path().join("wikitext2")), want);
    }

    fn want_order() -> [&'static str; 3] {
        ["wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"]
    }

    #[test]
    fn imagenet_needs_from_and_imports_a_tree() {
        let data = tempfile::tempdir().unwrap();
        let d = data.path().to_str().unwrap();
        let err = format!("{:#}", run(&["imagenet", "--dir", d]).unwrap_err());
        assert!(
            err.contains("ImageNet cannot be downloaded")
                && err.contains("cargo xtask download imagenet --from <folder or .tar>"),
            "{err}"
        );
        assert!(names(data.path()).is_empty());
        // Two real sample classes, one image each in train and val.
        let sample =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/imagenet-sample/val");
        let tree = tempfile::tempdir().unwrap();
        for (class, file) in [
            ("n0022", "imagenet_17_22.jpg"),
            ("n0099", "imagenet_15_99.jpg"),
        ] {
            for split in ["train", "val"] {
                let dir = tree.path().join(split).join(class);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::copy(sample.join(class).join(file), dir.join(file)).unwrap();
            }
        }
        let t = tree.path().to_str().unwrap();
        run(&["imagenet", "--dir", d, "--from", t]).unwrap();
        let info = Dataset::Imagenet.info(data.path()).unwrap();
        assert_eq!(
            (info.splits, info.classes),
            (vec![("train", 2), ("val", 2)], 2)
        );
        let err = format!("{:#}", run(&["ptb", "--dir", d, "--from", t]).unwrap_err());
        assert!(err.contains("--from is for imagenet only"), "{err}");
    }
}
