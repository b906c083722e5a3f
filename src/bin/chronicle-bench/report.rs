//! `report.json`, `report.md` and the latency chart (`latency.svg`, drawn by hand).

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// One line of the table: a figure, and its target when it has one.
#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub value: String,
    pub target: String,
    /// `Some(true)` PASS, `Some(false)` MISS, `None` no target.
    pub pass: Option<bool>,
}

impl Row {
    pub fn info(scenario: &str, figure: &str, value: String) -> Self {
        Self {
            scenario: scenario.into(),
            figure: figure.into(),
            value,
            target: String::new(),
            pass: None,
        }
    }

    pub fn target(scenario: &str, figure: &str, value: String, target: &str, pass: bool) -> Self {
        Self {
            scenario: scenario.into(),
            figure: figure.into(),
            value,
            target: target.into(),
            pass: Some(pass),
        }
    }

    fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "",
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "scenario": self.scenario, "figure": self.figure, "value": self.value,
            "target": self.target, "verdict": self.verdict(),
        })
    }
}

pub fn markdown(rows: &[Row], machine: &Value, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {title}\n");
    let _ = writeln!(
        out,
        "Machine: {} × {}, {} GiB RAM, {}; load average before {} / after {}; Postgres {} (fsync {}, synchronous_commit {}); commit {}{}; mode {}.\n",
        machine["cpus"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["memory_gib"],
        machine["kernel"].as_str().unwrap_or("?"),
        machine["load_before"].as_str().unwrap_or("?"),
        machine["load_after"].as_str().unwrap_or("?"),
        machine["postgres"].as_str().unwrap_or("?"),
        machine["fsync"].as_str().unwrap_or("?"),
        machine["synchronous_commit"].as_str().unwrap_or("?"),
        machine["commit"].as_str().unwrap_or("?"),
        if machine["dirty"].as_bool() == Some(true) { " (+ uncommitted changes)" } else { "" },
        machine["mode"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(out, "| scenario | figure | value | target | |");
    let _ = writeln!(out, "|---|---|---:|---|---|");
    for row in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            row.scenario,
            row.figure,
            row.value,
            row.target,
            row.verdict()
        );
    }
    let misses: Vec<String> = rows
        .iter()
        .filter(|r| r.pass == Some(false))
        .map(|r| format!("{} {}", r.scenario, r.figure))
        .collect();
    let _ = writeln!(
        out,
        "\n{} targets, {} PASS, {} MISS{}.",
        rows.iter().filter(|r| r.pass.is_some()).count(),
        rows.iter().filter(|r| r.pass == Some(true)).count(),
        misses.len(),
        if misses.is_empty() {
            String::new()
        } else {
            format!(": {}", misses.join(", "))
        }
    );
    out
}

/// The same figures from a baseline binary and from this build, side by side.
pub fn comparison(before: &[Row], after: &[Row], baseline: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n## Before / after in this run\n\nBefore: `{baseline}`, run first; after: this build. Same machine, minutes apart.\n"
    );
    let _ = writeln!(out, "| scenario | figure | before | after | target |");
    let _ = writeln!(out, "|---|---|---:|---:|---|");
    for row in after {
        let Some(old) = before
            .iter()
            .find(|b| b.scenario == row.scenario && b.figure == row.figure)
        else {
            continue;
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} {} | {} {} | {} |",
            row.scenario,
            row.figure,
            old.value,
            old.verdict(),
            row.value,
            row.verdict(),
            row.target
        );
    }
    out
}

/// Percentile curves (x: 0 to 99.99 % on a "nines" scale, y: latency on a log scale).
pub fn latency_svg(series: &[(String, Histogram<u64>)]) -> String {
    const W: f64 = 900.0;
    const H: f64 = 520.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 200.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 60.0;
    const COLORS: [&str; 10] = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
        "#bcbd22", "#17becf",
    ];
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let max_nines = 4.0; // 99.99 %
    let quantiles: Vec<f64> = (0..=400)
        .map(|i| 1.0 - 10f64.powf(-(i as f64) / 100.0))
        .collect();
    let series: Vec<_> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for (_, h) in &series {
        lo = lo.min((h.min().max(1) as f64 / 1000.0).log10());
        hi = hi.max((h.max().max(1) as f64 / 1000.0).log10());
    }
    if series.is_empty() {
        lo = -1.0;
        hi = 1.0;
    }
    let lo = lo.floor();
    let hi = hi.ceil().max(lo + 1.0);
    let x = |q: f64| LEFT + plot_w * ((-(1.0 - q).max(1e-4).log10()) / max_nines).min(1.0);
    let y = |ms: f64| TOP + plot_h * (1.0 - (ms.max(1e-3).log10() - lo) / (hi - lo));

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">Chronicle latency by percentile (successful requests)</text>"#,
        LEFT + plot_w / 2.0
    );
    // Grid: decades of milliseconds, and percentiles.
    let mut decade = lo;
    while decade <= hi + 1e-9 {
        let yy = y(10f64.powf(decade));
        let label = if decade < 0.0 {
            format!("{}", 10f64.powf(decade))
        } else {
            format!("{:.0}", 10f64.powf(decade))
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label} ms</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0
        );
        decade += 1.0;
    }
    for (q, label) in [
        (0.0, "0%"),
        (0.5, "50%"),
        (0.9, "90%"),
        (0.99, "99%"),
        (0.999, "99.9%"),
        (0.9999, "99.99%"),
    ] {
        let xx = x(q);
        let _ = writeln!(
            svg,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{TOP}" y2="{}" stroke="#ddd"/><text x="{xx:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        H - 15.0
    );
    for (i, (label, h)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = quantiles
            .iter()
            .map(|&q| {
                let ms = h.value_at_quantile(q) as f64 / 1000.0;
                format!("{:.1},{:.1}", x(q), y(ms))
            })
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let lx = LEFT + plot_w + 15.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            xml_escape(label)
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(name), contents)?;
    Ok(())
}
