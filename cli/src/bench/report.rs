//! Presenting results: a table for the terminal, JSON, a markdown table for the README, and
//! an SVG chart of throughput and p99 latency per cell.

use super::run::CellResult;
use super::system::Machine;
use anyhow::Context;
use comfy_table::{Cell, CellAlignment, ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::Path;

/// Everything a run produced, as written by `--json`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) command: String,
    pub(crate) settings: serde_json::Value,
    pub(crate) cells: Vec<CellResult>,
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.0} k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.2}")
    }
}

fn label(c: &CellResult) -> String {
    let size = if c.value_size >= 1024 && c.value_size.is_multiple_of(1024) {
        format!("{} KiB", c.value_size / 1024)
    } else {
        format!("{} B", c.value_size)
    };
    let auth = if c.auth { " / token" } else { "" };
    format!("{} / {} / {}{auth}", c.transport, c.codec, size)
}

const HEADERS: [&str; 13] = [
    "transport / codec / value",
    "mode",
    "records/s",
    "MB/s",
    "% of raw",
    "p50 ms",
    "p99 ms",
    "p999 ms",
    "wire B/rec",
    "ratio",
    "CPU s/M rec",
    "peak RSS MiB",
    "failed",
];

fn row(c: &CellResult) -> [String; 13] {
    [
        label(c),
        c.mode.clone(),
        fmt_rate(c.records_per_sec),
        format!("{:.1}", c.mb_per_sec),
        c.percent_of_raw.map_or("-".into(), |p| format!("{p:.0}%")),
        fmt_ms(c.p50_ms),
        fmt_ms(c.p99_ms),
        fmt_ms(c.p999_ms),
        format!("{:.1}", c.wire_bytes_per_record),
        format!("{:.2}", c.compression_ratio),
        format!("{:.2}", c.cpu_seconds_per_million),
        format!("{:.0}", c.peak_rss_mib),
        c.failed.to_string(),
    ]
}

/// The terminal table.
pub(crate) fn table(report: &Report) -> String {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(HEADERS);
    for cell in &report.cells {
        let cells: Vec<Cell> = row(cell)
            .into_iter()
            .enumerate()
            .map(|(i, text)| {
                let cell = Cell::new(text);
                if i >= 2 {
                    cell.set_alignment(CellAlignment::Right)
                } else {
                    cell
                }
            })
            .collect();
        table.add_row(cells);
    }
    format!(
        "{table}\n{}machine: {}\n",
        storage_lines(report),
        report.machine.describe()
    )
}

/// One line per cell that ran with object storage: objects, PUTs per GiB, commits per second.
fn storage_lines(report: &Report) -> String {
    let mut out = String::new();
    for cell in &report.cells {
        if let Some(s) = &cell.storage {
            let _ = writeln!(
                out,
                "{}/{}/{}B object storage: {} objects, {:.1} MiB, {:.0} PUTs per GiB, {:.1} \
                 metadata commits/s, {} failed attempts",
                cell.transport,
                cell.codec,
                cell.value_size,
                s.objects,
                s.bytes as f64 / f64::from(1u32 << 20),
                s.puts_per_gib(),
                s.commits as f64 / cell.seconds.max(1e-9),
                s.errors
            );
        }
    }
    out
}

/// The markdown section for the README.
pub(crate) fn markdown(report: &Report, chart: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Measured on {} with:\n", report.machine.describe());
    let _ = writeln!(out, "```sh\n{}\n```\n", report.command);
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(HEADERS.len()));
    for cell in &report.cells {
        let _ = writeln!(out, "| {} |", row(cell).join(" | "));
    }
    let _ = writeln!(
        out,
        "\nRecords/s, CPU and peak RSS include the embedded agent (same process, same two \
         cores) and the benchmark's pre-generated payload. Latency is send → acknowledgement, \
         sampled. `raw` rows push pre-encoded batches through the bare transport client: the \
         ceiling the producer is compared with. `latency` rows send at a set rate (half of \
         the cell's measured peak unless `--rate` is given)."
    );
    if let Some(chart) = chart {
        let _ = writeln!(out, "\n![throughput and p99 latency per cell]({chart})");
    }
    out
}

/// Replaces the text between `<!-- {marker}:begin -->` and `<!-- {marker}:end -->` in
/// `readme`: `bench` for the saturation results, `bench-latency` for `--latency` runs.
pub(crate) fn update_readme(readme: &Path, marker: &str, section: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- {marker}:begin -->");
    let end = format!("<!-- {marker}:end -->");
    let text = std::fs::read_to_string(readme)
        .with_context(|| format!("cannot read {}", readme.display()))?;
    let (Some(start), Some(stop)) = (text.find(&begin), text.find(&end)) else {
        anyhow::bail!("{} has no {begin} … {end} section", readme.display());
    };
    if stop < start {
        anyhow::bail!("{} has {end} before {begin}", readme.display());
    }
    let updated = format!("{}{begin}\n{section}{}", &text[..start], &text[stop..]);
    std::fs::write(readme, updated).with_context(|| format!("cannot write {}", readme.display()))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bars: records/s (left) and p99 latency (right), one row per cell.
pub(crate) fn svg(report: &Report) -> String {
    let cells = &report.cells;
    let (row_h, top, label_w, bar_w, gap) = (22.0, 56.0, 210.0, 330.0, 40.0);
    let width = label_w + 2.0 * bar_w + gap + 30.0;
    let height = top + row_h * cells.len() as f64 + 30.0;
    let max_rate = cells.iter().map(|c| c.records_per_sec).fold(1.0, f64::max);
    let max_p99 = cells
        .iter()
        .map(|c| c.p99_ms)
        .filter(|v| v.is_finite())
        .fold(0.001, f64::max);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">streamhouse bench — {}</text>"#,
        escape(&report.machine.describe())
    );
    let left = label_w;
    let right = label_w + bar_w + gap;
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="44" font-weight="bold">records/s</text>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{right}" y="44" font-weight="bold">p99 latency (ms)</text>"#
    );
    for (i, c) in cells.iter().enumerate() {
        let y = top + row_h * i as f64;
        let color = match (c.mode.as_str(), c.transport.as_str()) {
            ("raw", _) => "#999999",
            (_, "quic") => "#d9822b",
            _ => "#2b7bd9",
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            label_w - 8.0,
            y + 14.0,
            escape(&format!("{} ({})", label(c), c.mode))
        );
        // A bar and its figure, in one of the two columns.
        let bar = |s: &mut String, x: f64, w: f64, opacity: &str, figure: &str| {
            let _ = writeln!(
                s,
                r#"<rect x="{x}" y="{}" width="{w:.1}" height="{}" fill="{color}"{opacity}/>"#,
                y + 3.0,
                row_h - 6.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{}">{figure}</text>"#,
                x + w + 4.0,
                y + 14.0
            );
        };
        let rate = fmt_rate(c.records_per_sec);
        bar(
            &mut s,
            left,
            bar_w * c.records_per_sec / max_rate,
            "",
            &rate,
        );
        if c.p99_ms.is_finite() {
            let p99 = format!("{:.2}", c.p99_ms);
            bar(
                &mut s,
                right,
                bar_w * c.p99_ms / max_p99,
                r#" opacity="0.6""#,
                &p99,
            );
        }
    }
    let _ = writeln!(s, "</svg>");
    s
}
