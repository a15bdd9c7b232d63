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

#[derive(Serialize)]
pub struct Section {
    pub suite: String,
    pub title: String,
    #[serde(skip)]
    pub cols: Vec<Col>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Section {
    pub fn new(suite: &str, title: &str, cols: &[Col]) -> Section {
        Section {
            suite: suite.into(),
            title: title.into(),
            cols: cols.to_vec(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds `<key>_ratio` samples to every row but the baseline: per-round paired ratios.
    pub fn add_ratio(&mut self, baseline: usize, key: &str) {
        let Some(base) = self.rows.get(baseline).map(|r| r.samples(key).to_vec()) else {
            return;
        };
        let ratio_key = format!("{key}_ratio");
        for (i, row) in self.rows.iter_mut().enumerate() {
            if i == baseline {
                continue;
            }
            for r in paired_ratios(row.samples(key), &base) {
                row.push(&ratio_key, r);
            }
        }
    }

    pub fn finish(&mut self) {
        for r in &mut self.rows {
            r.finish();
        }
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
        let ncols = self.cols.len() + 1;
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
        let mut out = format!("\n== {} / {} ==\n", self.suite, self.title);
        for line in &cells {
            let mut text = String::new();
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
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
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
}
