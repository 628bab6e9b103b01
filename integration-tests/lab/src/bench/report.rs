//! The bench's results: the table printed on stdout, `bench.json` and `bench.svg`.

use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One throughput measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Stable key, e.g. `store_b1_c64`.
    pub key: String,
    /// What was measured, for humans.
    pub label: String,
    /// Events (or rows, or messages) done.
    pub events: u64,
    /// Seconds taken.
    pub seconds: f64,
    /// Events per second.
    pub rate: f64,
    /// `rate` / raw batched insert (row 1).
    pub vs_raw_pg: f64,
    /// `rate` / raw pipelined publish (row 2).
    pub vs_raw_js: f64,
    /// `rate` / the seed's design with 16 callers (row 3).
    pub vs_seed16: f64,
    /// Client CPU per event, µs (the bench process, or the relay process for the catch-up).
    pub cpu_client_us: Option<f64>,
    /// PostgreSQL CPU per event, µs (when the bench started the servers).
    pub cpu_postgres_us: Option<f64>,
    /// nats-server CPU per event, µs (when the bench started the servers).
    pub cpu_nats_us: Option<f64>,
}

/// Commit → broker acknowledgement at one paced rate.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    /// Offered rate, events per second.
    pub offered_rate: f64,
    /// Rate actually appended.
    pub achieved_rate: f64,
    /// Commit → ack, p50, ms.
    pub p50_ms: f64,
    /// Commit → ack, p99, ms.
    pub p99_ms: f64,
    /// Commit → ack, max, ms.
    pub max_ms: f64,
    /// Events measured.
    pub samples: u64,
    /// Commit → the relay handing the event to the publisher (the store side of commit → ack),
    /// p50, ms.
    pub read_p50_ms: f64,
    /// Commit → handed to the publisher, p99, ms.
    pub read_p99_ms: f64,
    /// Insert → ack (from the row's `recorded_at`, the relay's own metric), p50, ms.
    pub insert_p50_ms: f64,
    /// Insert → ack, p99, ms.
    pub insert_p99_ms: f64,
    /// Latency of the `append` calls themselves, p50, ms.
    pub append_p50_ms: f64,
    /// Latency of the `append` calls themselves, p99, ms.
    pub append_p99_ms: f64,
}

/// One of the bench's targets.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The target.
    pub goal: String,
    /// What this run measured.
    pub measured: String,
    /// Whether it is met.
    pub met: bool,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Quick (smoke) mode: figures are not meaningful.
    pub quick: bool,
    /// Size of one encoded event (the NATS payload and, as json text, the row's content), bytes.
    pub event_bytes: usize,
    /// Size of one NATS message with its headers, bytes.
    pub message_bytes: usize,
    /// Throughput rows, in order.
    pub rows: Vec<Row>,
    /// Latency at paced rates.
    pub latency: Vec<LatencyRow>,
    /// Peak resident size during the catch-up, bytes.
    pub relay_peak_rss_bytes: Option<u64>,
    /// Whose peak that is.
    pub relay_peak_rss_of: String,
    /// The targets, each judged within this run.
    pub targets: Vec<Target>,
    /// How to read the figures.
    pub notes: Vec<String>,
}

/// The commit → ack p99 a paced rate must stay under, run after run.
pub const P99_TARGET_MS: f64 = 10.0;

impl BenchReport {
    /// For each paced rate run more than once: its p99s' minimum, median and maximum, and how
    /// many runs stayed under [`P99_TARGET_MS`].
    pub fn p99_distributions(&self) -> Vec<String> {
        let mut rates: Vec<f64> = Vec::new();
        for l in &self.latency {
            if !rates.contains(&l.offered_rate) {
                rates.push(l.offered_rate);
            }
        }
        rates
            .into_iter()
            .filter_map(|rate| {
                let mut p99s: Vec<f64> = self
                    .latency
                    .iter()
                    .filter(|l| l.offered_rate == rate)
                    .map(|l| l.p99_ms)
                    .collect();
                if p99s.len() < 2 {
                    return None;
                }
                p99s.sort_by(f64::total_cmp);
                let under = p99s.iter().filter(|&&p| p < P99_TARGET_MS).count();
                Some(format!(
                    "   p99 over {} runs at {rate:.0} events/s: min {:.2} ms, median {:.2} ms, \
                     max {:.2} ms; {under} of {} under {P99_TARGET_MS:.0} ms",
                    p99s.len(),
                    p99s[0],
                    p99s[p99s.len() / 2],
                    p99s[p99s.len() - 1],
                    p99s.len()
                ))
            })
            .collect()
    }

    /// The row with `key`.
    pub fn row(&self, key: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.key == key)
    }

    /// Fills the ratio columns from rows `raw_pg`, `raw_js` and `seed_c16`.
    pub(crate) fn compute_ratios(&mut self) {
        let rate = |key: &str| self.row(key).map_or(0.0, |r| r.rate);
        let (pg, js, seed) = (rate("raw_pg"), rate("raw_js"), rate("seed_c16"));
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        for r in &mut self.rows {
            r.vs_raw_pg = ratio(r.rate, pg);
            r.vs_raw_js = ratio(r.rate, js);
            r.vs_seed16 = ratio(r.rate, seed);
        }
    }

    /// The table, for stdout.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nEduPulse event backbone — bench{} (events of {} B, messages of {} B with headers)\n",
            if self.quick {
                " (QUICK: a smoke run, figures not meaningful)"
            } else {
                ""
            },
            self.event_bytes,
            self.message_bytes
        );
        let _ = writeln!(
            out,
            "{:<66} {:>10} {:>8} {:>8} {:>8} {:>8}  {:>22}",
            "throughput",
            "events/s",
            "/rawPG",
            "/rawJS",
            "/seed16",
            "events",
            "CPU µs/ev cli/pg/nats"
        );
        let _ = writeln!(out, "{}", "-".repeat(140));
        let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}"));
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:<66} {:>10.0} {:>7.0}% {:>7.0}% {:>8} {:>8}  {:>22}",
                r.label,
                r.rate,
                r.vs_raw_pg * 100.0,
                r.vs_raw_js * 100.0,
                // Without the seed row (`--only`), there is no ratio to show.
                if r.vs_seed16 > 0.0 {
                    format!("{:.2}x", r.vs_seed16)
                } else {
                    "-".to_owned()
                },
                r.events,
                format!(
                    "{}/{}/{}",
                    us(r.cpu_client_us),
                    us(r.cpu_postgres_us),
                    us(r.cpu_nats_us)
                )
            );
        }
        let _ = writeln!(
            out,
            "\n{:<34} {:>10} {:>8} {:>8} {:>8} {:>8} {:>18} {:>18} {:>16}",
            "6. commit → ack (relay running)",
            "achieved/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "samples",
            "commit→read p50/99",
            "insert→ack p50/99",
            "append p50/p99"
        );
        for l in &self.latency {
            let _ = writeln!(
                out,
                "{:<34} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>18} {:>18} {:>16}",
                format!("   paced at {:.0} events/s", l.offered_rate),
                l.achieved_rate,
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                l.samples,
                format!("{:.1}/{:.1} ms", l.read_p50_ms, l.read_p99_ms),
                format!("{:.1}/{:.1} ms", l.insert_p50_ms, l.insert_p99_ms),
                format!("{:.1}/{:.1} ms", l.append_p50_ms, l.append_p99_ms)
            );
        }
        for line in self.p99_distributions() {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "\nrelay peak RSS during catch-up: {} ({})",
            self.relay_peak_rss_bytes.map_or_else(
                || "unknown".to_owned(),
                |b| format!("{:.1} MiB", b as f64 / 1048576.0)
            ),
            self.relay_peak_rss_of
        );
        let _ = writeln!(out, "\ntargets (ratios within this run):");
        for t in &self.targets {
            let _ = writeln!(
                out,
                "  [{}] {:<58} {}",
                if t.met { "MET" } else { "MISSED" },
                t.goal,
                t.measured
            );
        }
        let _ = writeln!(out, "\nnotes:");
        for n in &self.notes {
            let _ = writeln!(out, "  - {n}");
        }
        out
    }

    /// A bar chart of the throughput rows, and the latency and targets as text.
    pub fn svg(&self) -> String {
        const LABEL_W: f64 = 470.0;
        const BAR_W: f64 = 560.0;
        const ROW_H: f64 = 22.0;
        let max = self.rows.iter().map(|r| r.rate).fold(1.0, f64::max);
        let extra = self.latency.len() + self.targets.len() + 4;
        let height = 50.0 + ROW_H * (self.rows.len() + extra) as f64;
        let width = LABEL_W + BAR_W + 120.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="10" y="22" font-size="15" font-weight="bold">EduPulse event backbone — bench{} (events/s; bars to scale)</text>"#,
            if self.quick { " (quick)" } else { "" }
        );
        let mut y = 40.0;
        for r in &self.rows {
            let w = (r.rate / max * BAR_W).max(1.0);
            let colour = match r.key.as_str() {
                k if k.starts_with("raw") || k == "ceiling" => "#888888",
                k if k.starts_with("seed") => "#d9822b",
                _ => "#2b7bd9",
            };
            let _ = writeln!(
                s,
                r#"<text x="10" y="{ty}">{label}</text><rect x="{LABEL_W}" y="{y}" width="{w:.1}" height="{bh}" fill="{colour}"/><text x="{tx:.1}" y="{ty}">{rate:.0}</text>"#,
                ty = y + 14.0,
                label = xml(&r.label),
                bh = ROW_H - 6.0,
                tx = LABEL_W + w + 6.0,
                rate = r.rate,
            );
            y += ROW_H;
        }
        y += ROW_H;
        for l in &self.latency {
            let _ = writeln!(
                s,
                r#"<text x="10" y="{y}">commit → ack at {:.0}/s: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms</text>"#,
                l.offered_rate, l.p50_ms, l.p99_ms, l.max_ms
            );
            y += ROW_H;
        }
        if let Some(b) = self.relay_peak_rss_bytes {
            let _ = writeln!(
                s,
                r#"<text x="10" y="{y}">relay peak RSS: {:.1} MiB ({})</text>"#,
                b as f64 / 1048576.0,
                xml(&self.relay_peak_rss_of)
            );
        }
        y += ROW_H;
        for t in &self.targets {
            let _ = writeln!(
                s,
                r#"<text x="10" y="{y}" fill="{}">[{}] {} — {}</text>"#,
                if t.met { "#1a7f37" } else { "#c62828" },
                if t.met { "MET" } else { "MISSED" },
                xml(&t.goal),
                xml(&t.measured)
            );
            y += ROW_H;
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes `bench.json` and `bench.svg` under `dir`; returns their paths.
    ///
    /// # Errors
    /// The I/O error and the path it concerns.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), (PathBuf, std::io::Error)> {
        std::fs::create_dir_all(dir).map_err(|e| (dir.to_owned(), e))?;
        let json = dir.join("bench.json");
        let svg = dir.join("bench.svg");
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        std::fs::write(&json, text).map_err(|e| (json.clone(), e))?;
        std::fs::write(&svg, self.svg()).map_err(|e| (svg.clone(), e))?;
        Ok((json, svg))
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, rate: f64) -> Row {
        Row {
            key: key.into(),
            label: format!("{key} <&>"),
            events: 10,
            seconds: 1.0,
            rate,
            vs_raw_pg: 0.0,
            vs_raw_js: 0.0,
            vs_seed16: 0.0,
            cpu_client_us: Some(1.0),
            cpu_postgres_us: None,
            cpu_nats_us: None,
        }
    }

    #[test]
    fn p99s_of_repeated_runs_are_summarised_as_a_distribution() {
        let paced = |rate: f64, p99_ms: f64| LatencyRow {
            offered_rate: rate,
            achieved_rate: rate,
            p50_ms: 1.0,
            p99_ms,
            max_ms: p99_ms,
            samples: 100,
            read_p50_ms: 0.0,
            read_p99_ms: 0.0,
            insert_p50_ms: 0.0,
            insert_p99_ms: 0.0,
            append_p50_ms: 0.0,
            append_p99_ms: 0.0,
        };
        let report = BenchReport {
            quick: true,
            event_bytes: 400,
            message_bytes: 700,
            rows: vec![],
            latency: vec![
                paced(1000.0, 3.0),
                paced(5000.0, 12.0),
                paced(5000.0, 4.0),
                paced(5000.0, 8.0),
            ],
            relay_peak_rss_bytes: None,
            relay_peak_rss_of: String::new(),
            targets: vec![],
            notes: vec![],
        };
        assert_eq!(
            report.p99_distributions(),
            vec![
                "   p99 over 3 runs at 5000 events/s: min 4.00 ms, median 8.00 ms, max 12.00 ms; \
                 2 of 3 under 10 ms"
                    .to_owned()
            ]
        );
    }

    #[test]
    fn ratios_table_and_svg() {
        let mut report = BenchReport {
            quick: true,
            event_bytes: 400,
            message_bytes: 700,
            rows: vec![
                row("raw_pg", 100.0),
                row("raw_js", 50.0),
                row("seed_c16", 10.0),
                row("store_b1_c64", 40.0),
            ],
            latency: vec![],
            relay_peak_rss_bytes: Some(10 << 20),
            relay_peak_rss_of: "relay".into(),
            targets: vec![],
            notes: vec![],
        };
        report.compute_ratios();
        let r = report.row("store_b1_c64").unwrap();
        assert!((r.vs_seed16 - 4.0).abs() < 1e-9);
        assert!((r.vs_raw_js - 0.8).abs() < 1e-9);
        assert!(report.table().contains("4.00x"));
        let svg = report.svg();
        assert!(svg.starts_with("<svg") && svg.contains("&lt;&amp;&gt;"));
    }
}
