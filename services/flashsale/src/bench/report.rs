//! The run's report: a text summary, and one self-contained HTML page with three SVG plots
//! (latency, throughput and stock over time) drawn with `plotters`.

use std::{fmt::Write as _, path::Path, time::Duration};

use plotters::prelude::*;

/// One stock reading.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StockSample {
    /// Seconds since the start.
    pub(crate) at: f64,
    /// Units available.
    pub(crate) available: u64,
    /// Units held.
    pub(crate) held: u64,
    /// Units sold.
    pub(crate) sold: u64,
    /// Orders written to Postgres so far.
    pub(crate) persisted: u64,
}

/// Everything the plots draw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Series {
    /// Per second: attempts answered, accepted, refused, p50 and p99 latency (ms).
    pub(crate) ticks: Vec<flashsale_loadgen::Tick>,
    /// Stock readings.
    pub(crate) stock: Vec<StockSample>,
}

type Plot = Result<String, Box<dyn std::error::Error>>;

fn latency_svg(series: &Series) -> Plot {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = series.ticks.last().map_or(1, |t| t.second + 1) as f64;
        let y_max = series.ticks.iter().map(|t| t.p99_us).max().unwrap_or(1) as f64 / 1000.0 * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Latency over time (ms, from the intended send time)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max.max(0.1))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("ms")
            .draw()?;
        for (name, color, pick) in [
            (
                "p50",
                BLUE,
                (|t: &flashsale_loadgen::Tick| t.p50_us) as fn(&flashsale_loadgen::Tick) -> u64,
            ),
            ("p99", RED, |t: &flashsale_loadgen::Tick| t.p99_us),
        ] {
            chart
                .draw_series(LineSeries::new(
                    series
                        .ticks
                        .iter()
                        .map(|t| (f64::from(t.second), pick(t) as f64 / 1000.0)),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

fn throughput_svg(series: &Series) -> Plot {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = series.ticks.last().map_or(1, |t| t.second + 1) as f64;
        let y_max = series.ticks.iter().map(|t| t.completed).max().unwrap_or(1) as f64 * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Throughput over time (answers per second)",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("per second")
            .draw()?;
        for (name, color, pick) in [
            (
                "attempts",
                BLACK,
                (|t: &flashsale_loadgen::Tick| t.completed) as fn(&flashsale_loadgen::Tick) -> u64,
            ),
            ("accepted", GREEN, |t: &flashsale_loadgen::Tick| t.accepted),
            ("refused", RED, |t: &flashsale_loadgen::Tick| t.rejected),
        ] {
            chart
                .draw_series(LineSeries::new(
                    series
                        .ticks
                        .iter()
                        .map(|t| (f64::from(t.second), pick(t) as f64)),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

fn stock_svg(series: &Series, total: u64) -> Plot {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 320)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = series.stock.last().map_or(1.0, |s| s.at + 1.0);
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Stock over time (units) and orders written",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..x_max, 0f64..(total as f64 * 1.05).max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("units")
            .draw()?;
        for (name, color, pick) in [
            (
                "available",
                BLUE,
                (|s: &StockSample| s.available) as fn(&StockSample) -> u64,
            ),
            ("held", RGBColor(230, 140, 0), |s: &StockSample| s.held),
            ("sold", GREEN, |s: &StockSample| s.sold),
            ("orders in Postgres", BLACK, |s: &StockSample| s.persisted),
        ] {
            chart
                .draw_series(LineSeries::new(
                    series.stock.iter().map(|s| (s.at, pick(s) as f64)),
                    color.stroke_width(2),
                ))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `report.html` (summary + three plots, no external files) and `summary.txt` to `dir`.
pub(crate) fn write(
    dir: &Path,
    title: &str,
    summary: &str,
    series: &Series,
    total: u64,
) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let plot = |r: Plot| r.map_err(|e| anyhow::anyhow!("drawing a plot: {e}"));
    let (latency, throughput, stock) = (
        plot(latency_svg(series))?,
        plot(throughput_svg(series))?,
        plot(stock_svg(series, total))?,
    );
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:24px;max-width:960px}}pre{{background:#f6f6f6;padding:12px}}\
         figure{{margin:16px 0}}</style></head><body>\n<h1>{t}</h1>\n<pre>{s}</pre>\n\
         <figure id=\"latency\">{latency}</figure>\n<figure id=\"throughput\">{throughput}</figure>\n\
         <figure id=\"stock\">{stock}</figure>\n</body></html>\n",
        t = escape(title),
        s = escape(summary),
    );
    let page = dir.join("report.html");
    std::fs::write(&page, html)?;
    std::fs::write(dir.join("summary.txt"), summary)?;
    Ok(page)
}

/// `1.23 s` / `456 ms` / `78 µs`.
pub(crate) fn human(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        format!("{:.2} s", d.as_secs_f64())
    } else if d >= Duration::from_millis(1) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{} µs", d.as_micros())
    }
}
