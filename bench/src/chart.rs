//! The chart: one bar per figure, amesh / no mesh, with the 1.0 line, as SVG.

use anyhow::{Result, anyhow};
use plotters::{
    coord::ranged1d::SegmentValue,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

/// One bar.
#[derive(Clone, Debug)]
pub struct Bar {
    pub label: String,
    pub ratio: f64,
    pub higher_is_better: bool,
}

impl Bar {
    /// The mesh does worse than no mesh on this figure.
    fn worse(&self) -> bool {
        if self.higher_is_better {
            self.ratio < 1.0
        } else {
            self.ratio > 1.0
        }
    }
}

const WORSE: RGBColor = RGBColor(214, 96, 77);
const BETTER: RGBColor = RGBColor(67, 147, 195);

/// The chart as an SVG document; the first bar on top.
pub fn svg(title: &str, bars: &[Bar]) -> Result<String> {
    let mut out = String::new();
    // A ratio has no place on a log scale unless it is positive.
    let bars: Vec<Bar> = bars
        .iter()
        .filter(|b| b.ratio.is_finite() && b.ratio > 0.0)
        .cloned()
        .collect();
    draw(&mut out, title, &bars).map_err(|e| anyhow!("drawing the chart: {e}"))?;
    Ok(out)
}

fn draw(out: &mut String, title: &str, bars: &[Bar]) -> Result<(), Box<dyn std::error::Error>> {
    let n = bars.len().max(1);
    let height = 130 + 34 * n as u32;
    let root = SVGBackend::with_string(out, (960, height)).into_drawing_area();
    root.fill(&WHITE)?;
    // Log scale, bars from 1 out to the ratio (0.5x and 2x equally long): the x axis is
    // log10 of the ratio, symmetric around 0, its labels the ratios again.
    let span = bars
        .iter()
        .map(|b| b.ratio.log10().abs())
        .fold(0.3f64, f64::max)
        * 1.2;
    // Segment 0 is at the bottom: bar i goes in segment n - 1 - i.
    let row = |i: usize| n - 1 - i;
    let label = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(s) if *s < n => bars
            .get(n - 1 - s)
            .map(|b| b.label.clone())
            .unwrap_or_default(),
        _ => String::new(),
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(200)
        .build_cartesian_2d(-span..span, (0..n - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&label)
        .x_labels(9)
        .x_label_formatter(&|v| times(10f64.powf(*v)))
        .x_desc("amesh / no mesh, log scale (1 = as without the mesh; red: the mesh does worse)")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        let color = if b.worse() { WORSE } else { BETTER };
        let mut r = Rectangle::new(
            [
                (0.0, SegmentValue::Exact(row(i))),
                (b.ratio.log10(), SegmentValue::Exact(row(i) + 1)),
            ],
            color.filled(),
        );
        r.set_margin(5, 5, 0, 0);
        r
    }))?;
    chart.draw_series(bars.iter().enumerate().map(|(i, b)| {
        // The figure just past the bar's outer end.
        let (x, h) = if b.ratio >= 1.0 {
            (b.ratio.log10() + span * 0.01, HPos::Left)
        } else {
            (b.ratio.log10() - span * 0.01, HPos::Right)
        };
        let style = TextStyle::from(("sans-serif", 14)).pos(Pos::new(h, VPos::Center));
        Text::new(
            format!("{:.2}×", b.ratio),
            (x, SegmentValue::CenterOf(row(i))),
            style,
        )
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(0.0, SegmentValue::Exact(0)), (0.0, SegmentValue::Exact(n))],
        BLACK.stroke_width(2),
    )))?;
    root.present()?;
    Ok(())
}

/// A ratio as an axis label: `0.32×`, `1.0×`, `18×`.
fn times(r: f64) -> String {
    if r >= 9.95 {
        format!("{r:.0}×")
    } else if r >= 0.995 {
        format!("{r:.1}×")
    } else {
        format!("{r:.2}×")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_every_bar_and_label() {
        let bars = vec![
            Bar {
                label: "throughput, 1 stream".into(),
                ratio: 0.25,
                higher_is_better: true,
            },
            Bar {
                label: "TCP ping-pong p99".into(),
                ratio: 3.5,
                higher_is_better: false,
            },
        ];
        let svg = svg("amesh vs no mesh", &bars).unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        for text in [
            "throughput, 1 stream",
            "TCP ping-pong p99",
            "0.25×",
            "3.50×",
        ] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.contains("<rect"));
        assert_eq!(times(10f64.powf(-0.5)), "0.32×");
        assert_eq!(times(1.0), "1.0×");
        assert_eq!(times(17.8), "18×");
    }
}
