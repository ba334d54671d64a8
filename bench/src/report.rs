//! The results table (printed, and written as `RESULTS.md`).

use std::fmt::Write as _;

use crate::procs::{Kind, Setup};

/// One measured value of one server in one run.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub value: Option<f64>,
    decimals: usize,
    text: String,
    notes: Vec<String>,
}

impl Cell {
    pub fn number(value: f64, decimals: usize) -> Cell {
        Cell { value: Some(value), decimals, ..Cell::default() }
    }

    pub fn text(text: impl Into<String>) -> Cell {
        Cell { text: text.into(), ..Cell::default() }
    }

    /// Adds a parenthesized note (e.g. the reduced size Channels ran at).
    #[must_use]
    pub fn note(mut self, note: &str) -> Cell {
        if !note.is_empty() && !self.notes.iter().any(|n| n == note) {
            self.notes.push(note.to_owned());
        }
        self
    }

    fn base(&self) -> String {
        self.value.map_or_else(|| self.text.clone(), |value| format_number(value, self.decimals))
    }
}

/// Several runs of one cell: the median of numbers, the distinct texts otherwise.
fn merge(samples: &[Cell]) -> Option<Cell> {
    let first = samples.first()?;
    let mut notes: Vec<String> = Vec::new();
    for sample in samples {
        for note in &sample.notes {
            if !notes.contains(note) {
                notes.push(note.clone());
            }
        }
    }
    let mut values: Vec<f64> = samples.iter().filter_map(|cell| cell.value).collect();
    let merged = if values.len() == samples.len() {
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        let median = if values.len() % 2 == 1 { values[mid] } else { f64::midpoint(values[mid - 1], values[mid]) };
        Cell { value: Some(median), decimals: first.decimals, text: String::new(), notes }
    } else {
        let mut texts: Vec<String> = Vec::new();
        for sample in samples {
            let text = sample.base();
            if !texts.contains(&text) {
                texts.push(text);
            }
        }
        Cell { value: None, decimals: 0, text: texts.join(" / "), notes }
    };
    Some(merged)
}

/// The columns of a table, in order; the second one is the subject, whose ratio to each of the
/// others is shown. A column no row has a value in is left out of the rendered table.
pub trait Column: Copy + PartialEq + 'static {
    /// The columns, in table order.
    const ALL: &'static [Self];

    /// The column's header.
    fn header(self) -> &'static str;

    /// The report's table with these columns, to record in.
    fn table_mut(report: &mut Report) -> &mut Table<Self>;

    /// The subject (the middle column).
    fn subject() -> Self {
        Self::ALL[1]
    }
}

impl Column for Kind {
    const ALL: &'static [Kind] = &[Kind::Ceiling, Kind::Snorky, Kind::Channels, Kind::Eventstream];

    fn header(self) -> &'static str {
        match self {
            Kind::Eventstream => "django-eventstream",
            _ => self.name(),
        }
    }

    fn table_mut(report: &mut Report) -> &mut Table<Kind> {
        &mut report.main
    }
}

impl Column for Setup {
    const ALL: &'static [Setup] = &[Setup::Single, Setup::Cluster, Setup::ChannelsRedis];

    fn header(self) -> &'static str {
        self.name()
    }

    fn table_mut(report: &mut Report) -> &mut Table<Setup> {
        &mut report.cluster
    }
}

fn slot<C: Column>(column: C) -> usize {
    C::ALL.iter().position(|c| *c == column).unwrap_or(0)
}

/// One line of a table: a metric of a scenario, per column (one cell per run).
#[derive(Debug, Clone)]
pub struct Row<C = Kind> {
    pub metric: String,
    /// One list per column of `C::ALL`.
    samples: Vec<Vec<Cell>>,
    /// Whether ratios make sense for this metric.
    pub ratios: bool,
    columns: std::marker::PhantomData<C>,
}

impl<C: Column> Row<C> {
    pub fn new(metric: impl Into<String>, ratios: bool) -> Row<C> {
        Row {
            metric: metric.into(),
            samples: C::ALL.iter().map(|_| Vec::new()).collect(),
            ratios,
            columns: std::marker::PhantomData,
        }
    }

    /// Records one run's value.
    pub fn set(&mut self, column: C, cell: Cell) {
        self.samples[slot(column)].push(cell);
    }

    /// Whether some run recorded a cell of `column`.
    fn has(&self, column: C) -> bool {
        !self.samples[slot(column)].is_empty()
    }

    /// The value over all runs (median).
    pub fn get(&self, column: C) -> Option<Cell> {
        merge(&self.samples[slot(column)])
    }

    /// The rendered cell.
    pub fn text(&self, column: C) -> Option<String> {
        let cell = self.get(column)?;
        let mut text = cell.base();
        if !cell.notes.is_empty() {
            let _ = write!(text, " ({})", cell.notes.join("; "));
        }
        Some(text)
    }

    /// Every run's value, when there was more than one run.
    fn runs(&self, column: C) -> Option<String> {
        let samples = &self.samples[slot(column)];
        (samples.len() > 1).then(|| samples.iter().map(Cell::base).collect::<Vec<_>>().join(", "))
    }

    /// The value over all runs, when it is a number.
    pub fn value(&self, column: C) -> Option<f64> {
        self.get(column).and_then(|cell| cell.value)
    }

    /// subject / `other`, when both are numbers.
    pub fn ratio(&self, other: C) -> Option<f64> {
        if !self.ratios {
            return None;
        }
        let (subject, other) = (self.value(C::subject())?, self.value(other)?);
        (other > 0.0).then(|| subject / other)
    }
}

/// The rows of one table.
#[derive(Debug, Clone)]
pub struct Table<C = Kind> {
    pub rows: Vec<Row<C>>,
}

impl<C> Default for Table<C> {
    fn default() -> Self {
        Table { rows: Vec::new() }
    }
}

impl<C: Column> Table<C> {
    /// The row of `metric`, added at the end when it is new.
    pub fn row_mut(&mut self, metric: &str, ratios: bool) -> &mut Row<C> {
        if let Some(index) = self.rows.iter().position(|row| row.metric == metric) {
            return &mut self.rows[index];
        }
        self.rows.push(Row::new(metric, ratios));
        self.rows.last_mut().expect("just pushed")
    }

    /// The first row whose metric satisfies `wanted`.
    pub fn find(&self, wanted: impl Fn(&str) -> bool) -> Option<&Row<C>> {
        self.rows.iter().find(|row| wanted(&row.metric))
    }

    /// The table as markdown: the columns some row has a value in (the subject always), then the
    /// subject's ratio to each of the others.
    pub fn render(&self) -> String {
        let subject = C::subject();
        let columns: Vec<C> = C::ALL
            .iter()
            .copied()
            .filter(|&column| column == subject || self.rows.iter().any(|row| row.has(column)))
            .collect();
        let others: Vec<C> = columns.iter().copied().filter(|&column| column != subject).collect();
        let mut out = String::from("| metric |");
        for column in &columns {
            let _ = write!(out, " {} |", column.header());
        }
        for other in &others {
            let _ = write!(out, " {}/{} |", subject.header(), other.header());
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(columns.len() + others.len()));
        out.push('\n');
        for row in &self.rows {
            let _ = write!(out, "| {} |", row.metric);
            for &column in &columns {
                let _ = write!(out, " {} |", row.text(column).unwrap_or_else(|| "–".to_owned()));
            }
            for &other in &others {
                let ratio = row.ratio(other).map_or_else(|| "–".to_owned(), |r| format!("{}×", format_ratio(r)));
                let _ = write!(out, " {ratio} |");
            }
            out.push('\n');
        }
        out
    }

    /// Every run's value of the metrics measured more than once.
    pub fn runs(&self) -> String {
        let mut out = String::new();
        for row in &self.rows {
            let runs: Vec<String> = C::ALL
                .iter()
                .copied()
                .filter_map(|column| row.runs(column).map(|runs| format!("{}: {runs}", column.header())))
                .collect();
            if !runs.is_empty() {
                let _ = writeln!(out, "- {}: {}", row.metric, runs.join("; "));
            }
        }
        out
    }
}

/// The lines of a results file that say how, when and where it was run.
pub fn write_header(out: &mut String, command: &str, date: &str, revision: &str, machine: &str, load: (&str, &str)) {
    let _ = writeln!(out, "- Command: `{command}`");
    let _ = writeln!(out, "- Date: {date}");
    let _ = writeln!(out, "- Snorky revision: {revision}");
    let _ = writeln!(out, "- Machine: {machine}");
    let _ = writeln!(
        out,
        "- Load average (1/5/15 min) before: {}, after: {} (the machine is shared: other work may run)",
        load.0, load.1
    );
}

/// A targets table (target, measured, met) as markdown.
pub fn render_targets(lines: &[TargetLine]) -> String {
    let mut out = String::new();
    out.push_str("| target | measured | met |\n|---|---|---|\n");
    for line in lines {
        let met = match line.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "n/a",
        };
        let _ = writeln!(out, "| {} | {} | {met} |", line.target, line.measured);
    }
    out
}

/// Whether a target was reached.
#[derive(Debug, Clone)]
pub struct TargetLine {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// Everything the run produced.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub command: String,
    pub date: String,
    pub machine: String,
    pub revision: String,
    pub load_before: String,
    pub load_after: String,
    pub smoke: bool,
    /// The table of every server kind (ceiling, Snorky, Channels, django-eventstream).
    pub main: Table<Kind>,
    /// The table of several nodes on Redis (one node, the cluster, Channels on Redis).
    pub cluster: Table<Setup>,
    pub targets: Vec<TargetLine>,
    pub notes: Vec<String>,
    pub duration_s: f64,
}

impl Report {
    /// The row of `metric` in the main table.
    pub fn row_mut(&mut self, metric: &str, ratios: bool) -> &mut Row {
        self.main.row_mut(metric, ratios)
    }

    /// The main table alone.
    pub fn table(&self) -> String {
        self.main.render()
    }

    /// The targets table.
    pub fn targets_table(&self) -> String {
        render_targets(&self.targets)
    }

    /// The notes, each once.
    pub fn distinct_notes(&self) -> Vec<&String> {
        let mut seen: Vec<&String> = Vec::new();
        for note in &self.notes {
            if !seen.contains(&note) {
                seen.push(note);
            }
        }
        seen
    }

    /// The whole markdown document.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("# Snorky benchmark results\n\n");
        if self.smoke {
            out.push_str("**Smoke run: tiny sizes, the numbers mean nothing; targets are not judged.**\n\n");
        }
        write_header(
            &mut out,
            &self.command,
            &self.date,
            &self.revision,
            &self.machine,
            (&self.load_before, &self.load_after),
        );
        let _ = writeln!(out, "- Wall time of the run: {:.0} s", self.duration_s);
        out.push_str(
            "- Load generator and server run as separate processes on the same machine, over loopback; \
             each scenario starts a fresh server process. Ratios are snorky ÷ reference \
             (for latency and memory, lower is better).\n\n",
        );
        out.push_str(
            "- Reading the rows: fan-out latency includes waiting behind the publisher's 32-message \
             window (it is a throughput test; the steady rows are the latency test). \"server CPU\" and \
             \"load generator CPU\" are process CPU time divided by the work done, which is less \
             sensitive to other load on the machine than rates are. Channels' in-memory layer runs \
             `_clean_expired()` over every channel and group member on each `receive` and `group_send`, \
             so its cost per delivery grows with the number of connections.\n\n",
        );
        if !self.main.rows.is_empty() {
            out.push_str("## Results\n\n");
            out.push_str(&self.table());
            let runs = self.main.runs();
            if !runs.is_empty() {
                out.push_str("\nThe table shows the median of the runs; every run's value:\n\n");
                out.push_str(&runs);
            }
        }
        if !self.cluster.rows.is_empty() {
            out.push_str("\n## Several nodes on Redis\n\n");
            out.push_str(CLUSTER_INTRO);
            out.push_str(&self.cluster.render());
            let runs = self.cluster.runs();
            if !runs.is_empty() {
                out.push_str("\nEvery run's value:\n\n");
                out.push_str(&runs);
            }
        }
        out.push_str("\n## Targets\n\n");
        out.push_str(&self.targets_table());
        if !self.notes.is_empty() {
            out.push_str("\n## Notes\n\n");
            for note in self.distinct_notes() {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }
}

/// What the several-nodes table compares (before the table in `RESULTS.md`).
const CLUSTER_INTRO: &str = "The `cluster` scenario (`bench/run.sh --scenarios cluster`). Columns: **1 node**: one \
Snorky process without a broker, subscribers on it, publishes through its backend. **cluster**: a `redis-server` \
(no persistence) and three Snorky processes with `--broker`: the subscribers split evenly over two of them, the \
publishes through the backend of the third, which has no subscriber, so every delivery crosses Redis. \
**channels_redis**: the same layout with three daphne processes serving the Django Channels reference on \
`channels_redis`'s `RedisPubSubChannelLayer` (fan-out only, one run). Every process shares the machine's cores \
with Redis and the load generator. The fan-out rows use the fan-out scenario's load; the Redis hop rows publish \
at a steady rate. \"Redis CPU\" is redis-server's CPU time over the measured phase (its own `INFO cpu`), less \
its idle CPU (measured for 2 s before), divided by the publishes or by the deliveries to browsers; \"server CPU\" \
adds up every node's.\n\n";

/// `1234567.8` → `1,234,568`; fewer than 100 gets `decimals` decimals.
pub fn format_number(value: f64, decimals: usize) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    if value.abs() < 100.0 && decimals > 0 {
        return format!("{value:.decimals$}");
    }
    // `as` saturates; the figures of a report are far inside `i64`.
    #[allow(clippy::cast_possible_truncation)]
    let rounded = value.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    if rounded < 0 {
        grouped.insert(0, '-');
    }
    grouped
}

pub fn format_ratio(ratio: f64) -> String {
    if ratio >= 100.0 {
        format_number(ratio, 0)
    } else if ratio >= 10.0 {
        format!("{ratio:.1}")
    } else {
        format!("{ratio:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(format_number(1_234_567.8, 0), "1,234,568");
        assert_eq!(format_number(12.345, 2), "12.35");
        assert_eq!(format_number(999.0, 2), "999");
    }

    #[test]
    fn columns_without_values_are_left_out() {
        let mut table: Table<Kind> = Table::default();
        table.row_mut("p99 (ms)", true).set(Kind::Snorky, Cell::number(2.0, 1));
        table.row_mut("p99 (ms)", true).set(Kind::Eventstream, Cell::number(50.0, 1));
        table.row_mut("rss (MiB)", true).set(Kind::Snorky, Cell::number(90.0, 1));
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "| metric | snorky | django-eventstream | snorky/django-eventstream |");
        assert_eq!(lines[1], "|---|---:|---:|---:|");
        assert_eq!(lines[2], "| p99 (ms) | 2.0 | 50.0 | 0.04× |");
        assert_eq!(lines[3], "| rss (MiB) | 90.0 | – | – |");
    }
}
