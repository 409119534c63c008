//! The `nas` binary as a user runs it: outputs, files, exit codes and error lines.

// Test helpers may panic on a broken fixture: that is a failed test, not a bug to handle.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use nas_search_space::{bundled, Genotype};

fn nas(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nas"))
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("NAS_DATA_DIR")
        .env_remove("NAS_DATA_MIRROR")
        .output()
        .expect("running nas")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "nas failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

/// Bad input: status 2, exactly one line on stderr containing `needle`, no panic.
fn fails_with(args: &[&str], needle: &str) {
    let out = nas(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
}

fn write(dir: &Path, name: &str, contents: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn list_prints_every_bundled_genotype() {
    let text = stdout(&nas(&["genotype", "list"]));
    expect_test::expect![[r#"
        name          kind        source
        darts-v1      darts-cnn   DARTS (first order) CIFAR-10 cells, DARTS_V1 in cnn/genotypes.py
        darts-v2      darts-cnn   DARTS (second order) CIFAR-10 cells, DARTS_V2 in cnn/genotypes.py
        nasnet-a      darts-cnn   NASNet-A (Zoph et al. 2018), NASNet in DARTS's cnn/genotypes.py
        amoebanet-a   darts-cnn   AmoebaNet-A (Real et al. 2019), AmoebaNet in DARTS's cnn/genotypes.py
        darts-rnn-v1  darts-rnn   DARTS (first order) PTB cell, DARTS_V1 in rnn/genotypes.py
        darts-rnn-v2  darts-rnn   DARTS (second order) PTB cell, DARTS_V2 in rnn/genotypes.py
        enas-rnn      darts-rnn   ENAS PTB cell as DARTS lists it, ENAS in DARTS's rnn/genotypes.py
        enas-micro    enas-micro  ENAS final CIFAR-10 cells, scripts/cifar10_micro_final.sh
        enas-macro    enas-macro  ENAS final CIFAR-10 macro architecture (24 layers), scripts/cifar10_macro_final.sh
    "#]]
    .assert_eq(&text);
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&nas(&["genotype", "list", "--json"]))).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 9);
}

#[test]
fn show_prints_the_reference_notation() {
    let text = stdout(&nas(&["genotype", "show", "darts-rnn-v2"]));
    assert_eq!(
        text,
        "Genotype(recurrent=[('sigmoid', 0), ('relu', 1), ('relu', 1), ('identity', 1), ('tanh', 2), ('sigmoid', 5), ('tanh', 3), ('relu', 5)], concat=range(1, 9))\n"
    );
    let arc = stdout(&nas(&["genotype", "show", "enas-micro"]));
    assert_eq!(
        arc,
        "0 2 0 0 0 4 0 1 0 4 1 1 1 0 0 1 0 2 1 1 1 0 1 0 0 3 0 2 1 1 3 1 1 0 0 4 0 3 1 1\n"
    );
}

#[test]
fn files_convert_between_formats() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("g.json");
    stdout(&nas(&[
        "genotype",
        "show",
        "nasnet-a",
        "-f",
        "json",
        "-o",
        json_path.to_str().unwrap(),
    ]));
    let py = stdout(&nas(&["genotype", "show", json_path.to_str().unwrap()]));
    assert_eq!(
        Genotype::parse(&py, None).unwrap(),
        bundled("nasnet-a").unwrap()
    );
    let py_path = write(dir.path(), "g.py", py.as_bytes());
    let json = stdout(&nas(&["genotype", "show", &py_path, "--format", "json"]));
    assert_eq!(
        Genotype::from_json(&json).unwrap(),
        bundled("nasnet-a").unwrap()
    );

    let arc_path = write(dir.path(), "arc.txt", b"0\n3 0\n0 1 0\n");
    let arc = stdout(&nas(&[
        "genotype",
        "show",
        &arc_path,
        "--space",
        "enas-macro",
    ]));
    assert_eq!(arc, "0 3 0 0 1 0\n");
    // No temporary files are left beside the output.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
}

#[test]
fn draws_dot_and_svg() {
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("x.svg");
    stdout(&nas(&[
        "genotype",
        "show",
        "darts-v2",
        "--format",
        "svg",
        "-o",
        svg_path.to_str().unwrap(),
    ]));
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.contains("<svg") && svg.contains("dil_conv_3x3") && svg.contains("reduce cell"));
    let dot = stdout(&nas(&["genotype", "show", "darts-v2", "--format", "dot"]));
    assert!(dot.starts_with("digraph \"darts-cnn\" {"));
    assert!(
        dot.contains("\"normal/0\" -> \"normal/3\" [label=\"dil_conv_3x3\"];"),
        "{dot}"
    );
}

/// Raw alphas whose derivation is `genotype`: each kept edge's op gets a weight that
/// falls with its position in the node, everything else 0.
fn alphas_for(cell: &nas_search_space::CnnCell) -> Vec<Vec<f32>> {
    let mut rows = vec![vec![0.0f32; 8]; 14];
    let mut start = 0;
    for (node, edges) in cell.nodes().enumerate() {
        for (rank, e) in edges.iter().enumerate() {
            rows[start + e.input][e.op.index()] = 3.0 - rank as f32;
        }
        start += node + 2;
    }
    rows
}

#[test]
fn derive_from_json_and_safetensors_gives_back_darts_v2() {
    let Genotype::DartsCnn(v2) = bundled("darts-v2").unwrap() else {
        panic!()
    };
    let (normal, reduce) = (alphas_for(v2.normal()), alphas_for(v2.reduce()));
    let dir = tempfile::tempdir().unwrap();
    let json = serde_json::json!({"normal": normal, "reduce": reduce}).to_string();
    let json_path = write(dir.path(), "alphas.json", json.as_bytes());

    let flat = |rows: &[Vec<f32>]| -> Vec<u8> {
        rows.iter()
            .flatten()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    };
    let (nb, rb) = (flat(&normal), flat(&reduce));
    let views = [
        (
            "normal",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![14, 8], &nb)
                .unwrap(),
        ),
        (
            "reduce",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![14, 8], &rb)
                .unwrap(),
        ),
    ];
    let st_path = dir.path().join("alphas.safetensors");
    safetensors::serialize_to_file(views, None, &st_path).unwrap();

    for path in [json_path.as_str(), st_path.to_str().unwrap()] {
        let text = stdout(&nas(&[
            "genotype",
            "derive",
            "--space",
            "darts-cnn",
            "--alphas",
            path,
        ]));
        let Genotype::DartsCnn(derived) = Genotype::parse(&text, None).unwrap() else {
            panic!()
        };
        assert_eq!(derived.normal().edges(), v2.normal().edges(), "{path}");
        assert_eq!(derived.reduce().edges(), v2.reduce().edges(), "{path}");
        assert!(text.contains("normal_concat=range(2, 6)"), "{text}");
    }
}

#[test]
fn derive_rnn_from_json() {
    let mut rows = vec![vec![0.0f32; 5]; 36];
    let mut start = 0;
    for node in 0..8 {
        rows[start + node][2] = 1.0; // relu from the previous state
        start += node + 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "a.json",
        serde_json::json!({ "recurrent": rows })
            .to_string()
            .as_bytes(),
    );
    let text = stdout(&nas(&[
        "genotype",
        "derive",
        "--space",
        "darts-rnn",
        "--alphas",
        &path,
    ]));
    assert_eq!(
        text,
        "Genotype(recurrent=[('relu', 0), ('relu', 1), ('relu', 2), ('relu', 3), ('relu', 4), ('relu', 5), ('relu', 6), ('relu', 7)], concat=range(1, 9))\n"
    );
}

#[test]
fn bad_input_is_one_line_and_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fails_with(
        &["genotype", "show", "darts-v9"],
        "unknown genotype \"darts-v9\"; bundled genotypes are: darts-v1",
    );
    let broken = write(d, "broken.json", b"{\"kind\": \"darts-cnn\", \"normal\": [");
    fails_with(&["genotype", "show", &broken], "broken.json");
    let bad_op = write(
        d,
        "bad.py",
        b"Genotype(recurrent=[('tanhh', 0)], concat=[1])",
    );
    fails_with(
        &["genotype", "show", &bad_op],
        "unknown darts-rnn primitive \"tanhh\"",
    );
    let later = write(
        d,
        "later.py",
        b"Genotype(recurrent=[('tanh', 0), ('relu', 5)], concat=[1, 2])",
    );
    fails_with(&["genotype", "show", &later], "node 2 takes input 5");
    let arc = write(d, "arc.txt", b"0 1 2");
    fails_with(
        &["genotype", "show", &arc],
        "does not say its search space: give --space",
    );
    fails_with(
        &["genotype", "show", "enas-micro", "--format", "python"],
        "no Python notation",
    );
    let shape = write(
        d,
        "shape.json",
        br#"{"normal": [[0,0,0,0,0,0,0,0]], "reduce": [[0,0,0,0,0,0,0,0]]}"#,
    );
    fails_with(
        &[
            "genotype",
            "derive",
            "--space",
            "darts-cnn",
            "--alphas",
            &shape,
        ],
        "got 1 rows",
    );
    fails_with(
        &[
            "genotype",
            "derive",
            "--space",
            "darts-rnn",
            "--alphas",
            &shape,
        ],
        "needs a matrix named `recurrent`, found: normal, reduce",
    );
    let garbage = write(d, "garbage.bin", b"\x01\x02not safetensors");
    fails_with(
        &[
            "genotype",
            "derive",
            "--space",
            "darts-cnn",
            "--alphas",
            &garbage,
        ],
        "not a JSON object nor a valid safetensors file",
    );
    let nan: Vec<u8> = [0.0f32, f32::NAN, 0.0, 0.0, 0.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let st = d.join("nan.safetensors");
    safetensors::serialize_to_file(
        [(
            "recurrent",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 5], &nan)
                .unwrap(),
        )],
        None,
        &st,
    )
    .unwrap();
    fails_with(
        &[
            "genotype",
            "derive",
            "--space",
            "darts-rnn",
            "--alphas",
            st.to_str().unwrap(),
        ],
        "row 0, column 1 is NaN",
    );
    fails_with(
        &[
            "genotype",
            "derive",
            "--space",
            "darts-rnn",
            "--alphas",
            "/nonexistent/a.json",
        ],
        "reading alphas \"/nonexistent/a.json\"",
    );
}

fn shared_datasets() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets")
}

#[test]
fn data_fetch_imports_from_a_mirror_and_info_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mirror = shared_datasets();
    let m = mirror.to_str().unwrap();
    // Missing data names the exact command that fetches it, with this data directory.
    fails_with(
        &["data", "info", "ptb", "--data-dir", d],
        &format!("ptb not found: looked for \"{d}/ptb/ptb.train.txt\"; fetch it with `cargo xtask download ptb --dir {d}`"),
    );
    let text = stdout(&nas(&[
        "data",
        "fetch",
        "ptb",
        "--data-dir",
        d,
        "--mirror",
        m,
    ]));
    assert_eq!(
        text,
        format!("ptb is in {d}/ptb: train 929589, valid 73760, test 82430\n")
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&nas(&[
        "data",
        "info",
        "ptb",
        "--data-dir",
        d,
        "--json",
    ])))
    .unwrap();
    assert_eq!(json["classes_or_vocab"], 10_000);
    assert_eq!(json["shape"], serde_json::Value::Null);
    let statuses: Vec<&str> = json["checksums"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["ok", "ok", "ok"]);
    // NAS_DATA_MIRROR stands in for --mirror.
    let out = Command::new(env!("CARGO_BIN_EXE_nas"))
        .args(["data", "fetch", "fashion-mnist", "--data-dir", d])
        .env("NAS_DATA_MIRROR", m)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("train 60000, test 10000"));
    // No mirror: the command says it is mirror-only and names the download command.
    fails_with(
        &["data", "fetch", "cifar10", "--data-dir", d],
        &format!("imports from a local mirror only: pass --mirror DIR or set NAS_DATA_MIRROR; to download cifar10 from its official source run `cargo xtask download cifar10 --dir {d}`"),
    );
    // A mirror without the set's files.
    fails_with(
        &["data", "fetch", "cifar10", "--data-dir", d, "--mirror", m],
        "cifar10/cifar-10-binary.tar.gz",
    );
    fails_with(
        &["data", "fetch", "ptb", "--data-dir", d, "--from", m],
        "--from is for imagenet only",
    );
}

#[test]
fn data_fetch_imports_an_imagenet_tree_and_info_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    fails_with(
        &["data", "info", "imagenet", "--data-dir", d],
        &format!("fetch it with `cargo xtask download imagenet --from <ImageFolder tree or .tar> --dir {d}`"),
    );
    fails_with(
        &["data", "fetch", "imagenet", "--data-dir", d],
        "imagenet cannot be downloaded: pass an ImageFolder tree",
    );
    // Three real sample classes: train gets every image, val the first of each class.
    let sample = shared_datasets().join("imagenet-sample/val");
    let tree = dir.path().join("tree");
    for class in ["n0022", "n0099", "n0609"] {
        let mut files: Vec<_> = std::fs::read_dir(sample.join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for (k, file) in files.iter().enumerate() {
            for split in ["train", "val"] {
                if split == "val" && k > 0 {
                    continue;
                }
                let to = tree.join(split).join(class);
                std::fs::create_dir_all(&to).unwrap();
                std::fs::copy(file, to.join(file.file_name().unwrap())).unwrap();
            }
        }
    }
    let data = dir.path().join("data");
    let dd = data.to_str().unwrap();
    let text = stdout(&nas(&[
        "data",
        "fetch",
        "imagenet",
        "--data-dir",
        dd,
        "--from",
        tree.to_str().unwrap(),
    ]));
    assert_eq!(
        text,
        format!("imagenet is in {dd}/imagenet: 3 classes, train 4 images, val 3 images (0 other files left out)\n")
    );
    let text = stdout(&nas(&["data", "info", "imagenet", "--data-dir", dd]));
    assert_eq!(
        text,
        format!(
            "imagenet ({dd}/imagenet)\n  train  4 images\n  val    3 images\n  classes 3, images variable (decoded JPEG, RGB; batches 3x224x224)\n  {dd}/imagenet: n/a (imported, no published checksums)\n"
        )
    );
    let json: serde_json::Value = serde_json::from_str(&stdout(&nas(&[
        "data",
        "info",
        "imagenet",
        "--data-dir",
        dd,
        "--json",
    ])))
    .unwrap();
    assert_eq!(
        json["splits"][1],
        serde_json::json!({"split": "val", "examples": 3})
    );
    assert_eq!(
        json["shape"],
        "variable (decoded JPEG, RGB; batches 3x224x224)"
    );
    assert_eq!(
        json["checksums"][0]["status"],
        "n/a (imported, no published checksums)"
    );
    // A tree whose splits disagree is refused; the earlier import stays.
    std::fs::remove_dir_all(tree.join("val/n0609")).unwrap();
    fails_with(
        &[
            "data",
            "fetch",
            "imagenet",
            "--data-dir",
            dd,
            "--from",
            tree.to_str().unwrap(),
        ],
        "only in train/: n0609",
    );
    assert!(
        stdout(&nas(&["data", "info", "imagenet", "--data-dir", dd])).contains("val    3 images")
    );
}
