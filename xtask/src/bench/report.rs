//! Results of one suite section: per-variant samples (one per round), printed as a table of
//! medians and serialised to JSON with every sample kept.
use serde::Serialize;

use super::measure::{median, paired_ratios};

/// A column: key in JSON, header in the table, decimals shown.
#[derive(Clone, Copy)]
pub struct Col {
    pub key: &'static str,
    pub header: &'static str,
    pub decimals: usize,
}

pub const fn col(key: &'static str, header: &'static str, decimals: usize) -> Col {
    Col {
        key,
        header,
        decimals,
    }
}

#[derive(Serialize, Clone)]
pub struct Metric {
    pub key: String,
    pub median: Option<f64>,
    pub samples: Vec<f64>,
}

#[derive(Serialize, Clone)]
pub struct Row {
    pub variant: String,
    pub metrics: Vec<Metric>,
}

impl Row {
    pub fn new(variant: &str) -> Row {
        Row {
            variant: variant.to_owned(),
            metrics: Vec::new(),
        }
    }

    /// Appends one round's sample of `key`.
    pub fn push(&mut self, key: &str, value: f64) {
        match self.metrics.iter_mut().find(|m| m.key == key) {
            Some(m) => m.samples.push(value),
            None => self.metrics.push(Metric {
                key: key.to_owned(),
                median: None,
                samples: vec![value],
            }),
        }
    }

    pub fn samples(&self, key: &str) -> &[f64] {
        self.metrics
            .iter()
            .find(|m| m.key == key)
            .map_or(&[], |m| m.samples.as_slice())
    }

    fn finish(&mut self) {
        for m in &mut self.metrics {
            m.median = median(&m.samples);
        }
    }
}

/// Which side of its limit a budget figure must stay on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub enum Limit {
    AtLeast(f64),
    AtMost(f64),
}

/// One budget line of an issue, judged on this run's figures.
#[derive(Serialize, Clone)]
pub struct Budget {
    pub line: String,
    /// `None` when the run has no figure for it (a variant failed or was not run).
    pub measured: Option<f64>,
    pub limit: Limit,
    /// `None` without a figure.
    pub met: Option<bool>,
    #[serde(skip)]
    decimals: usize,
}

impl Budget {
    pub fn new(line: &str, measured: Option<f64>, limit: Limit, decimals: usize) -> Budget {
        let met = measured.map(|m| match limit {
            Limit::AtLeast(l) => m >= l,
            Limit::AtMost(l) => m <= l,
        });
        Budget {
            line: line.to_owned(),
            measured,
            limit,
            met,
            decimals,
        }
    }

    fn cells(&self) -> Vec<String> {
        let d = self.decimals;
        vec![
            self.line.clone(),
            self.measured
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.d$}")),
            match self.limit {
                Limit::AtLeast(l) => format!(">= {l:.d$}"),
                Limit::AtMost(l) => format!("<= {l:.d$}"),
            },
            match self.met {
                Some(true) => "met".to_owned(),
                Some(false) => "NOT MET".to_owned(),
                None => "no figure".to_owned(),
            },
        ]
    }
}

/// Aligned text columns: the first left-aligned, the others right-aligned.
fn align(cells: &[Vec<String>], indent: &str) -> String {
    let ncols = cells.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..ncols)
        .map(|i| {
            cells
                .iter()
                .filter_map(|l| l.get(i))
                .map(|s| s.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in cells {
        let mut text = indent.to_owned();
        for (i, cell) in line.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i == 0 {
                text.push_str(&format!("{cell:<w$}"));
            } else {
                text.push_str(&format!("  {cell:>w$}"));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

#[derive(Serialize)]
pub struct Section {
    pub suite: String,
    pub title: String,
    #[serde(skip)]
    pub cols: Vec<Col>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// Budget lines judged on this section's figures, printed after the notes.
    pub budgets: Vec<Budget>,
}

impl Section {
    pub fn new(suite: &str, title: &str, cols: &[Col]) -> Section {
        Section {
            suite: suite.into(),
            title: title.into(),
            cols: cols.to_vec(),
            rows: Vec::new(),
            notes: Vec::new(),
            budgets: Vec::new(),
        }
    }

    /// Adds `<key>_ratio` samples to every row but the baseline: per-round paired ratios.
    pub fn add_ratio(&mut self, baseline: usize, key: &str) {
        self.add_ratio_as(baseline, key, &format!("{key}_ratio"));
    }

    /// Like [`Section::add_ratio`], under `ratio_key` (for a second baseline).
    pub fn add_ratio_as(&mut self, baseline: usize, key: &str, ratio_key: &str) {
        let Some(base) = self.rows.get(baseline).map(|r| r.samples(key).to_vec()) else {
            return;
        };
        for (i, row) in self.rows.iter_mut().enumerate() {
            if i == baseline {
                continue;
            }
            for r in paired_ratios(row.samples(key), &base) {
                row.push(ratio_key, r);
            }
        }
    }

    pub fn finish(&mut self) {
        for r in &mut self.rows {
            r.finish();
        }
    }

    /// The row named `variant`.
    pub fn row(&self, variant: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.variant == variant)
    }

    /// The median of `key` in the row named `variant` (after [`Section::finish`]).
    pub fn median(&self, variant: &str, key: &str) -> Option<f64> {
        self.row(variant)?
            .metrics
            .iter()
            .find(|m| m.key == key)?
            .median
    }

    /// Median table; `-` where a variant has no sample of a column.
    pub fn render(&self) -> String {
        let mut cells: Vec<Vec<String>> = vec![
            std::iter::once("variant".to_owned())
                .chain(self.cols.iter().map(|c| c.header.to_owned()))
                .collect(),
        ];
        for row in &self.rows {
            let mut line = vec![row.variant.clone()];
            for c in &self.cols {
                let v = row
                    .metrics
                    .iter()
                    .find(|m| m.key == c.key)
                    .and_then(|m| m.median);
                line.push(v.map_or_else(|| "-".to_owned(), |v| format!("{v:.*}", c.decimals)));
            }
            cells.push(line);
        }
        let mut out = format!("\n== {} / {} ==\n", self.suite, self.title);
        if !self.rows.is_empty() {
            out.push_str(&align(&cells, ""));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        if !self.budgets.is_empty() {
            let mut lines = vec![
                ["budget", "measured", "limit", "verdict"]
                    .map(String::from)
                    .to_vec(),
            ];
            lines.extend(self.budgets.iter().map(Budget::cells));
            out.push_str(&align(&lines, "  "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_medians_and_table() {
        let mut s = Section::new(
            "http",
            "max rate",
            &[col("rps", "req/s", 0), col("rps_ratio", "vs a", 3)],
        );
        let mut a = Row::new("a");
        let mut c = Row::new("c");
        for (x, y) in [(100.0, 90.0), (200.0, 190.0), (50.0, 50.0)] {
            a.push("rps", x);
            c.push("rps", y);
        }
        s.rows = vec![a, c];
        s.add_ratio(0, "rps");
        s.finish();
        let c = &s.rows[1];
        assert_eq!(c.samples("rps_ratio"), &[0.9, 0.95, 1.0]);
        assert_eq!(c.metrics[1].median, Some(0.95));
        let table = s.render();
        let line = |v: &str| {
            table
                .lines()
                .find(|l| l.starts_with(v))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("c "), ["c", "90", "0.950"], "{table}");
        assert_eq!(line("a "), ["a", "100", "-"], "{table}");
    }

    #[test]
    fn budgets_are_judged_and_printed() {
        let mut s = Section::new("http", "budgets", &[]);
        s.budgets = vec![
            Budget::new("floor kept", Some(0.47), Limit::AtLeast(0.8), 2),
            Budget::new("CPU ms per 1k", Some(2.5), Limit::AtMost(2.5), 2),
            Budget::new("lost", None, Limit::AtMost(0.0), 0),
        ];
        assert_eq!(
            s.budgets.iter().map(|b| b.met).collect::<Vec<_>>(),
            [Some(false), Some(true), None]
        );
        let text = s.render();
        let words = |start: &str| -> Vec<String> {
            text.lines()
                .find(|l| l.trim_start().starts_with(start))
                .unwrap_or_else(|| panic!("{start} in {text}"))
                .split("  ")
                .map(str::trim)
                .filter(|w| !w.is_empty())
                .map(String::from)
                .collect()
        };
        assert_eq!(words("floor"), ["floor kept", "0.47", ">= 0.80", "NOT MET"]);
        assert_eq!(words("CPU"), ["CPU ms per 1k", "2.50", "<= 2.50", "met"]);
        assert_eq!(words("lost"), ["lost", "-", "<= 0", "no figure"]);
        assert!(!text.contains("variant"), "no empty table: {text}");
    }

    #[test]
    fn a_second_baseline_and_medians_by_name() {
        let mut s = Section::new("http", "max rate", &[]);
        let mut rows: Vec<Row> = ["a", "b", "c"].iter().map(|v| Row::new(v)).collect();
        for (row, x) in rows.iter_mut().zip([100.0, 80.0, 40.0]) {
            row.push("rps", x);
        }
        s.rows = rows;
        s.add_ratio(0, "rps");
        s.add_ratio_as(1, "rps", "rps_floor_ratio");
        s.finish();
        assert_eq!(s.median("c", "rps_ratio"), Some(0.4));
        assert_eq!(s.median("c", "rps_floor_ratio"), Some(0.5));
        assert_eq!(s.median("b", "rps_floor_ratio"), None);
        assert_eq!(s.median("z", "rps"), None);
    }
}
