//! `streamhouse bench` at a tiny size: the command works end to end, its JSON has every cell,
//! its chart is valid SVG and the README section is replaced in place. The real figures come
//! from the full run documented in the README, not from here.

mod support;

use serde_json::Value;
use support::run;

fn cells(json: &Value) -> &Vec<Value> {
    json["cells"].as_array().expect("a cells array")
}

fn find<'a>(cells: &'a [Value], transport: &str, codec: &str, mode: &str) -> &'a Value {
    cells
        .iter()
        .find(|c| c["transport"] == transport && c["codec"] == codec && c["mode"] == mode)
        .unwrap_or_else(|| panic!("no {transport}/{codec}/{mode} cell in {cells:#?}"))
}

#[test]
fn tiny_bench_writes_table_json_chart_and_readme_section() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("bench.json");
    let chart_path = dir.path().join("bench.svg");
    let readme_path = dir.path().join("README.md");
    std::fs::write(
        &readme_path,
        "# Title\n\n<!-- bench:begin -->\nold figures\n<!-- bench:end -->\n\nAfter.\n",
    )
    .unwrap();

    let out = run(
        &[
            "bench",
            "--duration",
            "300ms",
            "--value-size",
            "100",
            "--codecs",
            "none,lz4",
            "--partitions",
            "2",
            "--json",
            json_path.to_str().unwrap(),
            "--chart",
            chart_path.to_str().unwrap(),
            "--update-readme",
            readme_path.to_str().unwrap(),
        ],
        b"",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The table: a row per cell and the machine.
    for row in [
        "grpc / none / 100 B",
        "grpc / lz4 / 100 B",
        "quic / none / 100 B",
    ] {
        assert!(stdout.contains(row), "no row {row:?} in\n{stdout}");
    }
    assert!(stdout.contains("machine: "), "{stdout}");

    // JSON: every cell of the matrix (2 transports x (raw + 2 codecs)), with real figures.
    let json: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert!(json["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(!json["machine"]["cpu_model"].as_str().unwrap().is_empty());
    let cells = cells(&json);
    assert_eq!(cells.len(), 6, "{cells:#?}");
    for transport in ["grpc", "quic"] {
        let raw = find(cells, transport, "raw", "raw");
        assert!(raw["records_per_sec"].as_f64().unwrap() > 0.0);
        for codec in ["none", "lz4"] {
            let cell = find(cells, transport, codec, "producer");
            assert!(cell["records"].as_u64().unwrap() > 0, "{cell}");
            assert_eq!(cell["failed"].as_u64().unwrap(), 0, "{cell}");
            assert!(cell["records_per_sec"].as_f64().unwrap() > 0.0, "{cell}");
            let p50 = cell["p50_ms"].as_f64().unwrap();
            let p99 = cell["p99_ms"].as_f64().unwrap();
            assert!(p50 > 0.0 && p99 >= p50, "{cell}");
            assert!(cell["peak_rss_mib"].as_f64().unwrap() > 0.0, "{cell}");
            assert!(cell["cpu_seconds_per_million"].as_f64().unwrap() > 0.0);
            assert!(cell["percent_of_raw"].as_f64().unwrap() > 0.0, "{cell}");
        }
        // Honest compression: the JSON events shrink under LZ4, not without a codec.
        let none = find(cells, transport, "none", "producer");
        let lz4 = find(cells, transport, "lz4", "producer");
        assert!(none["compression_ratio"].as_f64().unwrap() <= 1.0, "{none}");
        assert!(lz4["compression_ratio"].as_f64().unwrap() > 1.5, "{lz4}");
        assert!(
            lz4["wire_bytes_per_record"].as_f64().unwrap()
                < none["wire_bytes_per_record"].as_f64().unwrap()
        );
    }

    // The chart parses as SVG and draws a labelled bar per cell.
    let svg = std::fs::read_to_string(&chart_path).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("the chart is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2000/svg")
    );
    let bars = root
        .children()
        .filter(|n| n.has_tag_name("rect") && n.attribute("y").is_some())
        .count();
    assert!(bars >= cells.len(), "{bars} bars for {} cells", cells.len());
    let labels: Vec<&str> = root
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    assert!(
        labels.iter().any(|l| l.contains("quic / lz4 / 100 B")),
        "{labels:?}"
    );

    // The README: the section replaced, the rest kept, the chart linked relatively.
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    assert!(
        readme.starts_with("# Title\n\n<!-- bench:begin -->\n"),
        "{readme}"
    );
    assert!(
        readme.ends_with("<!-- bench:end -->\n\nAfter.\n"),
        "{readme}"
    );
    assert!(!readme.contains("old figures"), "{readme}");
    assert!(
        readme.contains("| grpc / lz4 / 100 B | producer |"),
        "{readme}"
    );
    assert!(readme.contains("](bench.svg)"), "{readme}");
}

#[test]
fn latency_mode_paces_at_the_rate_asked() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("latency.json");
    let out = run(
        &[
            "bench",
            "--latency",
            "--rate",
            "20000",
            "--duration",
            "500ms",
            "--transports",
            "grpc",
            "--codecs",
            "none",
            "--value-size",
            "100",
            "--json",
            json_path.to_str().unwrap(),
        ],
        b"",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let cells = cells(&json);
    assert_eq!(cells.len(), 1, "latency mode has no raw rows: {cells:#?}");
    let cell = find(cells, "grpc", "none", "latency");
    assert_eq!(cell["target_rate"].as_f64(), Some(20000.0));
    // Paced: never more than 20,000/s × 0.5 s (a loaded machine may send fewer), not the
    // saturation figure.
    let records = cell["records"].as_u64().unwrap();
    assert!((1..=10_500).contains(&records), "{records} records");
    assert_eq!(cell["failed"].as_u64().unwrap(), 0);
    assert!(cell["p99_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_rejects_what_it_cannot_run() {
    let out = run(&["bench", "--transports", "carrier-pigeon"], b"");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown transport"), "{stderr}");

    let out = run(&["bench", "--latency", "--rate", "0"], b"");
    assert!(!out.status.success());
}
