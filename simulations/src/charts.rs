//! SVG charts of a run's time series (plotters, SVG backend only: no fonts
//! or system libraries needed).

use std::path::Path;

use plotters::prelude::*;

use crate::error::SimError;
use crate::results::{RunResult, WindowRow};

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn chart(path: &Path, title: &str, y_label: &str, series: &[Series<'_>]) -> Result<(), SimError> {
    let err = |e: String| SimError::Chart {
        path: path.display().to_string(),
        reason: e,
    };
    let points = series.iter().flat_map(|s| s.2.iter());
    let (mut x_max, mut y_max) = (0.0f64, 0.0f64);
    for (x, y) in points {
        if x.is_finite() {
            x_max = x_max.max(*x);
        }
        if y.is_finite() {
            y_max = y_max.max(*y);
        }
    }
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let y_max = if y_max > 0.0 { y_max * 1.05 } else { 1.0 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(|e| err(e.to_string()))?;
        c.configure_mesh()
            .x_desc("simulated time (s)")
            .y_desc(y_label)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (name, color, data) in series {
            let color = *color;
            let data: Vec<(f64, f64)> = data
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            c.draw_series(LineSeries::new(data, color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                });
        }
        c.configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        root.present().map_err(|e| err(e.to_string()))?;
    }
    std::fs::write(path, svg).map_err(|source| SimError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// `latency.svg`, `success.svg`, `price.svg`, `trust.svg`.
pub fn write_all(r: &RunResult, dir: &Path) -> Result<(), SimError> {
    let w = &r.windows;
    let pts = |f: &dyn Fn(&WindowRow) -> f64| -> Vec<(f64, f64)> {
        w.iter().map(|x| (x.t_s, f(x))).collect()
    };
    chart(
        &dir.join("latency.svg"),
        "Latency per window",
        "ms",
        &[
            ("TTFT p50", BLUE, pts(&|x| x.ttft.p50)),
            ("TTFT p95", CYAN, pts(&|x| x.ttft.p95)),
            ("total p50", RED, pts(&|x| x.total.p50)),
            ("total p95", MAGENTA, pts(&|x| x.total.p95)),
        ],
    )?;
    chart(
        &dir.join("success.svg"),
        "Success rate per window",
        "served / (served + failed)",
        &[("success rate", GREEN, pts(&|x| x.success_rate))],
    )?;
    chart(
        &dir.join("price.svg"),
        "What builders paid per 1M tokens",
        "USD / 1M tokens",
        &[("cost", BLUE, pts(&|x| x.usd_per_mtok))],
    )?;
    chart(
        &dir.join("trust.svg"),
        "Trust and adversaries' traffic",
        "score / share",
        &[
            ("mean trust, honest", GREEN, pts(&|x| x.trust_honest)),
            ("mean trust, adversaries", RED, pts(&|x| x.trust_adversary)),
            (
                "adversaries' traffic share",
                MAGENTA,
                pts(&|x| x.adversary_traffic_share),
            ),
        ],
    )?;
    Ok(())
}
