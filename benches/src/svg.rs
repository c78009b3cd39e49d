//! SVG line charts drawn with `plotters` (its SVG backend only): enough for latency against fd
//! count and against client RSS. Text is emitted as SVG `<text>`, so no font is needed to render.

use std::ops::Range;

use plotters::coord::ranged1d::{AsRangedCoord, DefaultFormatting, KeyPointHint, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::Result;

/// One line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// A color as `#rrggbb`.
    pub color: &'static str,
    /// Points `(x, y)`, drawn in the order given.
    pub points: Vec<(f64, f64)>,
    /// Dashed line without point markers (for baselines).
    pub dashed: bool,
}

/// A line chart.
#[derive(Clone, Debug)]
pub struct Chart {
    /// Title above the plot.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// X ticks: value and label (the only x ticks drawn).
    pub x_ticks: Vec<(f64, String)>,
    /// Logarithmic y axis (whole decades), for values spanning orders of magnitude.
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
}

const SIZE: (u32, u32) = (900, 460);
/// Room right of the plot for the legend, so that it never hides a line.
const LEGEND_WIDTH: u32 = 220;

/// A tick label without needless decimals.
fn label(v: f64) -> String {
    if v >= 1.0 && v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// `#rrggbb` to a color.
fn rgb(hex: &str) -> Result<RGBColor> {
    let h = hex
        .strip_prefix('#')
        .filter(|h| h.len() == 6)
        .ok_or_else(|| format!("color {hex:?}: expected #rrggbb"))?;
    let c = |i: usize| u8::from_str_radix(&h[i..i + 2], 16);
    Ok(RGBColor(c(0)?, c(2)?, c(4)?))
}

/// A linear f64 axis whose only ticks are the given ones (plotters' `WithKeyPoints` has no
/// default label formatting, which the mesh wants even with a custom formatter).
struct TickedAxis {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

impl Chart {
    /// The chart as a standalone SVG document.
    pub fn render(&self) -> Result<String> {
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
        let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in pts {
            x0 = x0.min(x);
            x1 = x1.max(x);
            if !self.log_y || y > 0.0 {
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
        }
        for (x, _) in &self.x_ticks {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
        }
        if !x0.is_finite() || !y0.is_finite() {
            return Err(format!("chart {:?}: no points", self.title).into());
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
            root.fill(&WHITE)?;
            let (plot, legend) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
            if self.log_y {
                let lo = 10f64.powf(y0.log10().floor());
                let hi = 10f64.powf(y1.log10().ceil()).max(lo * 10.0);
                // Widened a hair: plotters finds the first decade with `ln(lo) / ln(10)`, which
                // rounds up past -1 for 0.1 and would drop that tick.
                self.draw(&plot, x0..x1, (lo * 0.999_999..hi * 1.000_001).log_scale())?;
            } else {
                let hi = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
                self.draw(&plot, x0..x1, 0.0..hi)?;
            }
            self.legend(&legend)?;
            root.present()?;
        }
        Ok(out)
    }

    fn draw<Y>(&self, root: &DrawingArea<SVGBackend<'_>, Shift>, x: Range<f64>, y: Y) -> Result<()>
    where
        Y: AsRangedCoord<Value = f64>,
        Y::CoordDescType: ValueFormatter<f64>,
    {
        let x = TickedAxis {
            inner: x.into(),
            ticks: self.x_ticks.iter().map(|t| t.0).collect(),
        };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 18))
            .margin(12)
            .margin_right(24)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x, y)?;
        let x_label = |v: &f64| {
            self.x_ticks
                .iter()
                .find(|t| t.0 == *v)
                .map_or_else(|| label(*v), |t| t.1.clone())
        };
        chart
            .configure_mesh()
            .x_desc(&self.x_label)
            .y_desc(&self.y_label)
            .x_label_formatter(&x_label)
            .y_label_formatter(&|v| label(*v))
            // Light lines: the sub-decades of a log axis only.
            .y_max_light_lines(if self.log_y { 9 } else { 0 })
            .bold_line_style(RGBColor(0xd0, 0xd0, 0xd0))
            .light_line_style(RGBColor(0xf0, 0xf0, 0xf0))
            .label_style(("sans-serif", 13))
            .axis_desc_style(("sans-serif", 14))
            .draw()?;
        for s in &self.series {
            let color = rgb(s.color)?;
            let style = color.stroke_width(2);
            if s.dashed {
                chart.draw_series(DashedLineSeries::new(s.points.iter().copied(), 8, 5, style))?;
            } else {
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), style).point_size(3))?;
            }
        }
        Ok(())
    }

    /// The legend, in its own area right of the plot (the plot's own series labels would be
    /// drawn over the lines, or clipped if put outside the plotting area).
    fn legend(&self, area: &DrawingArea<SVGBackend<'_>, Shift>) -> Result<()> {
        let font =
            TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        for (i, s) in self.series.iter().enumerate() {
            let y = 52 + 22 * i as i32;
            let style = rgb(s.color)?.stroke_width(2);
            if s.dashed {
                area.draw(&PathElement::new([(0, y), (9, y)], style))?;
                area.draw(&PathElement::new([(15, y), (24, y)], style))?;
            } else {
                area.draw(&PathElement::new([(0, y), (24, y)], style))?;
                area.draw(&Circle::new((12, y), 3, style))?;
            }
            area.draw(&Text::new(s.name.as_str(), (32, y), font.clone()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contents of the `<text>` elements.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>')?.1.split_once("</text>"))
            .map(|(t, _)| t.trim())
            .collect()
    }

    #[test]
    fn renders_both_scales() {
        for log_y in [false, true] {
            let c = Chart {
                title: "t <x>".into(),
                x_label: "fds".into(),
                y_label: "µs".into(),
                x_ticks: vec![(0.0, "zero".into()), (8.0, "8 GiB".into())],
                log_y,
                series: vec![
                    Series {
                        name: "solid".into(),
                        color: "#d62728",
                        points: vec![(0.0, 0.5), (4.0, 180.0), (8.0, 340.0)],
                        dashed: false,
                    },
                    Series {
                        name: "base & line".into(),
                        color: "#1f77b4",
                        points: vec![(0.0, 20.0), (8.0, 20.0)],
                        dashed: true,
                    },
                ],
            };
            let svg = c.render().unwrap();
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            let texts = texts(&svg);
            for text in [
                "t &lt;x&gt;",
                "fds",
                "µs",
                "zero",
                "8 GiB",
                "solid",
                "base &amp; line",
            ] {
                assert!(texts.contains(&text), "{text}: {texts:?}");
            }
            // The solid line is one polyline; the dashed one is several short ones.
            assert!(svg.matches("<polyline").count() >= 3, "{svg}");
            assert!(svg.contains("#D62728") || svg.contains("#d62728"), "{svg}");
            // Three points and the solid line's legend marker.
            assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
            if log_y {
                assert!(
                    texts.contains(&"100") && texts.contains(&"0.1"),
                    "{texts:?}"
                );
            }
        }
    }

    #[test]
    fn labels_and_colors() {
        assert_eq!(label(20.0), "20");
        assert_eq!(label(0.25), "0.25");
        assert_eq!(rgb("#1f77b4").unwrap(), RGBColor(0x1f, 0x77, 0xb4));
        assert!(rgb("red").is_err());
        assert!(Chart {
            title: "empty".into(),
            x_label: String::new(),
            y_label: String::new(),
            x_ticks: vec![],
            log_y: false,
            series: vec![],
        }
        .render()
        .is_err());
    }
}
