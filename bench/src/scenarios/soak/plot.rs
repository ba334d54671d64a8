//! The soak's plot: one SVG, five panels over the run's minutes (server memory; descriptors
//! and connections; tasks; deliveries per second; connects per second), with the end of the
//! warm-up, the end of the load and the ±10% band of resident memory marked.
//!
//! Drawn with `plotters` (SVG backend only: the text is left to the viewer's fonts, so no font
//! library is linked).

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::samples::{Phase, Sample, Spread};

/// One line of a panel.
struct Line {
    name: &'static str,
    color: RGBColor,
    points: Points,
}

/// The vertical marks and the band.
pub(super) struct Marks {
    /// Minutes: the end of the warm-up.
    pub(super) warmup: f64,
    /// Minutes: the end of the load.
    pub(super) stop: f64,
    /// Resident memory after the warm-up (its median, MiB), drawn ±10%.
    pub(super) rss: Option<Spread>,
}

const RED: RGBColor = RGBColor(200, 40, 40);
const BLUE: RGBColor = RGBColor(30, 90, 200);
const GREEN: RGBColor = RGBColor(30, 150, 70);
const GREY: RGBColor = RGBColor(120, 120, 120);

const MIB: f64 = 1024.0 * 1024.0;

/// Writes the plot of `samples` to `path`.
pub(super) fn draw(path: &Path, title: &str, samples: &[Sample], marks: &Marks) -> Result<(), String> {
    let root = SVGBackend::new(path, (960, 1400)).into_drawing_area();
    root.fill(&WHITE).map_err(|err| err.to_string())?;
    let root = root.titled(title, ("sans-serif", 18)).map_err(|err| err.to_string())?;
    let panels = root.split_evenly((5, 1));
    let minutes = |sample: &Sample| sample.secs / 60.0;
    let line = |name, color, value: &dyn Fn(&Sample) -> Option<f64>| Line {
        name,
        color,
        points: samples.iter().filter_map(|s| Some((minutes(s), value(s)?))).collect(),
    };
    let rates = rates(samples);
    let band = marks.rss.map(|spread| (spread.median * 0.9 / 1024.0, spread.median * 1.1 / 1024.0));
    let contents = [
        (
            "Server memory",
            "MiB",
            vec![
                line("resident (RSS)", RED, &|s| s.rss_kib.map(|kib| kib as f64 / 1024.0)),
                line("live heap", BLUE, &|s| s.heap_bytes.map(|bytes| bytes as f64 / MIB)),
            ],
            band,
        ),
        (
            "Open file descriptors and connections",
            "count",
            vec![
                line("server fds", RED, &|s| s.fds.map(|fds| fds as f64)),
                line("snorky_connections gauge", BLUE, &|s| s.gauge("snorky_connections")),
                line("clients connected (load generator)", GREEN, &|s| Some(s.clients as f64)),
            ],
            None,
        ),
        ("Tokio tasks", "count", vec![line("alive tasks", RED, &|s| s.tasks.map(|tasks| tasks as f64))], None),
        ("Deliveries", "per second", vec![Line { name: "received by the clients", color: RED, points: rates.0 }], None),
        ("Churn", "per second", vec![Line { name: "connects (sessions started)", color: BLUE, points: rates.1 }], None),
    ];
    let xmax = samples.iter().map(minutes).fold(0.0, f64::max).max(marks.stop) * 1.02 + 1e-6;
    for (area, (caption, unit, lines, band)) in panels.iter().zip(contents) {
        panel(area, caption, unit, xmax, &lines, marks, band)?;
    }
    root.present().map_err(|err| err.to_string())
}

/// Points of a line: (minutes, value).
type Points = Vec<(f64, f64)>;

/// Deliveries and connects per second between consecutive samples under load (the point sits
/// at the interval's end).
fn rates(samples: &[Sample]) -> (Points, Points) {
    let loaded: Vec<&Sample> = samples.iter().filter(|s| s.phase != Phase::After).collect();
    let mut deliveries = Vec::new();
    let mut connects = Vec::new();
    for pair in loaded.windows(2) {
        let seconds = pair[1].secs - pair[0].secs;
        if seconds <= 0.0 {
            continue;
        }
        let x = pair[1].secs / 60.0;
        deliveries.push((x, pair[1].received.saturating_sub(pair[0].received) as f64 / seconds));
        connects.push((x, pair[1].sessions.saturating_sub(pair[0].sessions) as f64 / seconds));
    }
    (deliveries, connects)
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    caption: &str,
    unit: &str,
    xmax: f64,
    lines: &[Line],
    marks: &Marks,
    band: Option<(f64, f64)>,
) -> Result<(), String> {
    let top = lines.iter().flat_map(|line| line.points.iter().map(|point| point.1)).fold(0.0, f64::max);
    // Headroom above the lines for the legend (upper right, where the lines have ended).
    let ymax = top.max(band.map_or(0.0, |band| band.1)) * 1.6 + 1.0;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .map_err(|err| err.to_string())?;
    chart
        .configure_mesh()
        .x_desc("minutes")
        .y_desc(unit)
        .light_line_style(WHITE)
        .draw()
        .map_err(|err| err.to_string())?;
    if let Some((low, high)) = band {
        let from = marks.warmup;
        chart
            .draw_series([low, high].map(|y| PathElement::new(vec![(from, y), (xmax, y)], GREY.stroke_width(1))))
            .map_err(|err| err.to_string())?
            .label("RSS median after warm-up ±10%")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], GREY.stroke_width(1)));
    }
    for x in [marks.warmup, marks.stop] {
        chart
            .draw_series(std::iter::once(PathElement::new(vec![(x, 0.0), (x, ymax)], GREY.mix(0.5).stroke_width(1))))
            .map_err(|err| err.to_string())?;
    }
    for line in lines {
        let color = line.color;
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))
            .map_err(|err| err.to_string())?
            .label(line.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(GREY)
        .draw()
        .map_err(|err| err.to_string())
}
