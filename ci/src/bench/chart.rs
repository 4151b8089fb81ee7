//! The SVG chart beside `docs/benchmarks.md`: every variant in the scenario
//! closest to the templates' defaults, next to the bare loop of its shape,
//! as horizontal bars of items/s on a log scale.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::doc::{Measured, human};
use super::plan::{Channel, ItemKind, Point, Scenario, Subject, VARIANTS};

const TEMPLATE_ITEMS: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const TEMPLATE_BATCHES: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const BARE: RGBColor = RGBColor(0x99, 0x99, 0x99);

/// One bar: its label, its median, and its colour.
struct Bar {
    label: String,
    rate: f64,
    color: RGBColor,
}

/// The scenario the chart shows for a variant: 4 producers, 4 workers where
/// the template has them, capacity 64, no work.
fn headline(has_workers: bool) -> Scenario {
    Scenario {
        producers: 4,
        workers: if has_workers { 4 } else { 1 },
        capacity: 64,
        work_us: 0,
    }
}

/// The bars, grouped by variant: its entries, then its bare loop; the rtrb
/// ring last, as the hardware reference.
fn bars(results: &[Measured]) -> Vec<Bar> {
    let rate = |point: &Point| {
        results
            .iter()
            .find(|m| m.point == *point)
            .map(Measured::median)
    };
    let mut bars = Vec::new();
    for (index, variant) in VARIANTS.iter().enumerate() {
        let scenario = headline(variant.has_workers);
        for &batch_max in variant.batch_sizes {
            let point = Point {
                subject: Subject::Template {
                    variant: index,
                    batch_max,
                },
                scenario,
            };
            if let Some(rate) = rate(&point) {
                let (entry, color) = match batch_max {
                    1 => ("item by item".to_owned(), TEMPLATE_ITEMS),
                    n => (format!("batches of {n}"), TEMPLATE_BATCHES),
                };
                bars.push(Bar {
                    label: format!("{}, {entry}", variant.name),
                    rate,
                    color,
                });
            }
        }
        let bare = Point {
            subject: Subject::Bare(variant.layout),
            scenario,
        };
        if let Some(rate) = rate(&bare) {
            let item = match variant.layout.item {
                ItemKind::Number => "",
                ItemKind::Record => " and item",
            };
            bars.push(Bar {
                label: format!(
                    "bare {} loop, same shape{item}",
                    variant.layout.channel.label()
                ),
                rate,
                color: BARE,
            });
        }
    }
    let ring = results.iter().find(|m| {
        matches!(m.point.subject, Subject::Bare(layout) if layout.channel == Channel::Rtrb)
            && m.point.scenario.capacity == 64
    });
    if let Some(ring) = ring {
        bars.push(Bar {
            label: "rtrb ring, 1 thread to 1 thread (hardware reference)".to_owned(),
            rate: ring.median(),
            color: BARE,
        });
    }
    bars
}

/// Draws the chart into `path`.
pub fn draw(results: &[Measured], path: &Path) -> Result<()> {
    let bars = bars(results);
    if bars.is_empty() {
        return Err(anyhow!("nothing to chart"));
    }
    let rows = bars.len();
    let height = 120 + 26 * rows as u32;
    let root = SVGBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;

    let lowest = bars.iter().map(|b| b.rate).fold(f64::INFINITY, f64::min);
    let highest = bars.iter().map(|b| b.rate).fold(0.0, f64::max);
    // Room to the right of the longest bar for its label.
    let x_range = (lowest / 4.0).max(1.0)..highest * 40.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "items/s, 4 producers, 4 workers where the template has them, capacity 64, no work",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .build_cartesian_2d(x_range.clone().log_scale(), 0.0..rows as f64)
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("items/s (log scale; median of the rounds)")
        .x_label_formatter(&|value| human(*value))
        .draw()
        .map_err(|e| anyhow!("{e:?}"))?;

    // Row 0 at the top: plotters puts 0 at the bottom, so rows count down.
    let top = |row: usize| (rows - row) as f64;
    chart
        .draw_series(bars.iter().enumerate().map(|(row, bar)| {
            Rectangle::new(
                [
                    (x_range.start, top(row) - 0.15),
                    (bar.rate, top(row) - 0.85),
                ],
                bar.color.filled(),
            )
        }))
        .map_err(|e| anyhow!("{e:?}"))?;
    chart
        .draw_series(bars.iter().enumerate().map(|(row, bar)| {
            Text::new(
                format!("{}  {}", bar.label, human(bar.rate)),
                (bar.rate * 1.15, top(row) - 0.3),
                ("sans-serif", 13).into_font(),
            )
        }))
        .map_err(|e| anyhow!("{e:?}"))?;
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::plan::points;

    #[test]
    fn draws_every_variant_of_a_quick_run() {
        let results: Vec<Measured> = points(true)
            .into_iter()
            .enumerate()
            .map(|(i, point)| Measured {
                point,
                rates: vec![1e5 * (i + 1) as f64],
            })
            .collect();
        let dir = crate::scratch_dir("chart");
        let path = dir.path().join("chart.svg");
        draw(&results, &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        for variant in VARIANTS {
            assert!(svg.contains(variant.name), "{} missing", variant.name);
        }
        assert!(svg.contains("rtrb ring"));
        assert!(svg.contains("<rect"));
    }
}
