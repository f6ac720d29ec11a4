//! The benchmark's latency distribution plot for docs/performance.md: one cumulative
//! distribution line per series, written as a PNG. It is drawn pixel by pixel with
//! a small embedded bitmap font so the benchmark needs no plotting library (only the
//! `png` encoder, already a dev-dependency).

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::Path;

/// One line of the plot.
pub struct Series {
    /// Legend label, ASCII.
    pub name: String,
    /// RGB.
    pub color: [u8; 3],
    /// Samples in milliseconds (unsorted; may be empty).
    pub values_ms: Vec<f64>,
}

type Rgb = [u8; 3];

const WIDTH: usize = 900;
const HEIGHT: usize = 520;
// Plot area, in pixels.
const LEFT: i64 = 100;
const RIGHT: i64 = 860;
const TOP: i64 = 60;
const BOTTOM: i64 = 440;

const BLACK: Rgb = [0, 0, 0];
const WHITE: Rgb = [255, 255, 255];
const GRID: Rgb = [226, 226, 226];
const FRAME: Rgb = [150, 150, 150];

/// Writes a PNG (900x520 px, white background) with one cumulative-distribution
/// line per series: x = latency in ms, from 0 to a "nice" bound a bit above the
/// largest 99th percentile (values beyond it are clipped at the right edge), y =
/// fraction of samples <= x. Non-finite samples are ignored; a series without
/// samples only appears in the legend.
pub fn cdf_png(path: &Path, title: &str, x_label: &str, series: &[Series]) -> io::Result<()> {
    let sorted: Vec<Vec<f64>> = series
        .iter()
        .map(|s| {
            let mut v: Vec<f64> = s
                .values_ms
                .iter()
                .copied()
                .filter(|v| v.is_finite())
                .collect();
            v.sort_by(f64::total_cmp);
            v
        })
        .collect();
    // Nearest-rank 99th percentile of each series; the axis ends a bit above the largest.
    let p99 = sorted
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| v[((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len()) - 1])
        .fold(0.0, f64::max);
    let (x_max, step, ticks) = nice_axis(p99 * 1.05);

    let mut cv = Canvas::new();
    let (pw, ph) = ((RIGHT - LEFT) as f64, (BOTTOM - TOP) as f64);
    let to_y = |f: f64| BOTTOM - (f * ph).round() as i64;

    // Title, as large as fits.
    let mut scale = 3;
    while scale > 1 && text_width(title, scale) > WIDTH as i64 - 20 {
        scale -= 1;
    }
    let title_x = WIDTH as i64 / 2 - text_width(title, scale) / 2;
    cv.text((title_x, 16), title, scale, BLACK);

    // Y grid, ticks and labels.
    for (i, label) in ["0", "0.25", "0.5", "0.75", "1"].iter().enumerate() {
        let y = to_y(i as f64 / 4.0);
        cv.line((LEFT, y), (RIGHT, y), 1, GRID);
        cv.line((LEFT - 6, y), (LEFT, y), 2, BLACK);
        cv.text((LEFT - 12 - text_width(label, 2), y - 7), label, 2, BLACK);
    }
    let y_label = "fraction of samples <= x";
    let y_mid = TOP + (BOTTOM - TOP) / 2;
    cv.text_up((18, y_mid + text_width(y_label, 2) / 2), y_label, 2, BLACK);

    // X grid, ticks and labels, all with as many decimals as the step needs.
    let decimals = (0..6)
        .find(|&d| {
            let s = step * 10f64.powi(d);
            (s - s.round()).abs() < 1e-6 * s.max(1.0)
        })
        .unwrap_or(6) as usize;
    for i in 0..=ticks {
        let x = LEFT + (i as f64 / ticks as f64 * pw).round() as i64;
        let label = if i == 0 {
            "0".to_string()
        } else {
            format!("{:.*}", decimals, i as f64 * step)
        };
        cv.line((x, TOP), (x, BOTTOM), 1, GRID);
        cv.line((x, BOTTOM), (x, BOTTOM + 6), 2, BLACK);
        let label_x = (x - text_width(&label, 2) / 2).min(WIDTH as i64 - 2 - text_width(&label, 2));
        cv.text((label_x, BOTTOM + 12), &label, 2, BLACK);
    }
    let label_x = (LEFT + RIGHT) / 2 - text_width(x_label, 2) / 2;
    cv.text((label_x, BOTTOM + 42), x_label, 2, BLACK);

    // One step line per series: at each pixel column, the fraction of samples <= x.
    // It starts at the smallest sample and ends at the right edge.
    for (s, v) in series.iter().zip(&sorted) {
        let Some(&first) = v.first() else { continue };
        let start = ((first / x_max * pw).floor().max(0.0) as i64).min(RIGHT - LEFT);
        let mut prev = (LEFT + start, BOTTOM);
        for col in start..=(RIGHT - LEFT) {
            let x_val = x_max * col as f64 / pw;
            let frac = v.partition_point(|&a| a <= x_val) as f64 / v.len() as f64;
            let (x, y) = (LEFT + col, to_y(frac));
            cv.line(prev, (x, prev.1), 3, s.color);
            cv.line((x, prev.1), (x, y), 3, s.color);
            prev = (x, y);
        }
    }

    // Axes on top of the grid and the lines.
    cv.line((LEFT, TOP), (LEFT, BOTTOM), 2, BLACK);
    cv.line((LEFT, BOTTOM), (RIGHT, BOTTOM), 2, BLACK);

    // Legend in the lower right of the plot area.
    if !series.is_empty() {
        let row_h = 24;
        let name_w = series
            .iter()
            .map(|s| text_width(&s.name, 2))
            .max()
            .unwrap_or(0);
        let (bw, bh) = (12 + 32 + 10 + name_w + 12, series.len() as i64 * row_h + 12);
        let (bx, by) = (RIGHT - 14 - bw, BOTTOM - 14 - bh);
        cv.rect(bx, by, bw, bh, WHITE);
        cv.line((bx, by), (bx + bw, by), 1, FRAME);
        cv.line((bx, by + bh), (bx + bw, by + bh), 1, FRAME);
        cv.line((bx, by), (bx, by + bh), 1, FRAME);
        cv.line((bx + bw, by), (bx + bw, by + bh), 1, FRAME);
        for (i, s) in series.iter().enumerate() {
            let yc = by + 6 + i as i64 * row_h + row_h / 2;
            cv.line((bx + 12, yc), (bx + 44, yc), 3, s.color);
            cv.text((bx + 54, yc - 7), &s.name, 2, BLACK);
        }
    }

    let file = BufWriter::new(File::create(path)?);
    let mut encoder = png::Encoder::new(file, WIDTH as u32, HEIGHT as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&cv.px)?;
    writer.finish()?;
    Ok(())
}

/// Axis from 0 to at least `target`: returns (upper bound, tick step, number of
/// steps), the step being 1, 2, 2.5 or 5 times a power of ten and the number of
/// steps 5 to 10 (the smallest such step that gives at most 10).
fn nice_axis(target: f64) -> (f64, f64, u32) {
    let target = if target > 0.0 && target.is_finite() {
        target
    } else {
        1.0
    };
    let mut exp = target.log10().floor() as i32 - 2;
    loop {
        for m in [1.0, 2.0, 2.5, 5.0] {
            let step = m * 10f64.powi(exp);
            let n = (target / step - 1e-9).ceil().max(1.0);
            if n <= 10.0 {
                return (n * step, step, n as u32);
            }
        }
        exp += 1;
    }
}

/// Width in pixels of `s` drawn at `scale` (glyphs are 5 wide with 1 column gap).
fn text_width(s: &str, scale: i64) -> i64 {
    (s.chars().count() as i64 * 6 - 1).max(0) * scale
}

/// An RGB image of WIDTH x HEIGHT pixels; drawing outside it is ignored.
struct Canvas {
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Canvas {
            px: vec![255; WIDTH * HEIGHT * 3],
        }
    }

    fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Rgb) {
        for yy in y.max(0)..(y + h).min(HEIGHT as i64) {
            for xx in x.max(0)..(x + w).min(WIDTH as i64) {
                let i = (yy as usize * WIDTH + xx as usize) * 3;
                self.px[i..i + 3].copy_from_slice(&c);
            }
        }
    }

    /// Bresenham line drawn with a square brush of `t` x `t` pixels.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), t: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = ((x1 - x0).signum(), (y1 - y0).signum());
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        let off = (t - 1) / 2;
        loop {
            self.rect(x - off, y - off, t, t, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws `s` with the bitmap font, each font pixel `scale` x `scale`, with its
    /// top-left corner at (x, y).
    fn text(&mut self, (x, y): (i64, i64), s: &str, scale: i64, c: Rgb) {
        for (u, v) in font_pixels(s, scale) {
            self.rect(x + u, y + v, scale, scale, c);
        }
    }

    /// Like `text`, but turned 90 degrees counter-clockwise (reading bottom to top)
    /// with its bottom-left corner at (x, y).
    fn text_up(&mut self, (x, y): (i64, i64), s: &str, scale: i64, c: Rgb) {
        for (u, v) in font_pixels(s, scale) {
            self.rect(x + v, y - u - scale, scale, scale, c);
        }
    }
}

/// Offsets of the set font pixels of `s` drawn at `scale`: (along the text, down
/// the glyphs).
fn font_pixels(s: &str, scale: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
    s.chars().enumerate().flat_map(move |(i, ch)| {
        let g = glyph(ch);
        (0..8i64).flat_map(move |row| {
            (0..5i64)
                .filter(move |col| g[row as usize] & (0x10 >> col) != 0)
                .map(move |col| ((i as i64 * 6 + col) * scale, row * scale))
        })
    })
}

/// The 5x8 glyph of `c` (one byte per row, bit 4 = leftmost column; row 7 holds
/// descenders), blank for characters the font lacks.
fn glyph(c: char) -> [u8; 8] {
    FONT.iter()
        .find(|(k, _)| *k as char == c)
        .map_or([0; 8], |(_, g)| *g)
}

const FONT: &[(u8, [u8; 8])] = &[
    (b'0', [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E, 0]),
    (b'1', [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E, 0]),
    (b'2', [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F, 0]),
    (b'3', [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E, 0]),
    (b'4', [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02, 0]),
    (b'5', [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E, 0]),
    (b'6', [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E, 0]),
    (b'7', [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0]),
    (b'8', [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E, 0]),
    (b'9', [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C, 0]),
    (b'.', [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C, 0]),
    (b',', [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08]),
    (b'-', [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00, 0]),
    (b'+', [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00, 0]),
    (b'=', [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00, 0]),
    (b'<', [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02, 0]),
    (b'>', [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08, 0]),
    (b':', [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00, 0]),
    (b'(', [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02, 0]),
    (b')', [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08, 0]),
    (b'/', [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00, 0]),
    (b'%', [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0]),
    (b'_', [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F, 0]),
    (b'A', [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0]),
    (b'B', [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E, 0]),
    (b'C', [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E, 0]),
    (b'D', [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C, 0]),
    (b'E', [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F, 0]),
    (b'F', [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10, 0]),
    (b'G', [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F, 0]),
    (b'H', [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11, 0]),
    (b'I', [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0]),
    (b'J', [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C, 0]),
    (b'K', [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11, 0]),
    (b'L', [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F, 0]),
    (b'M', [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11, 0]),
    (b'N', [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0]),
    (b'O', [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0]),
    (b'P', [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10, 0]),
    (b'Q', [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D, 0]),
    (b'R', [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11, 0]),
    (b'S', [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E, 0]),
    (b'T', [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0]),
    (b'U', [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0]),
    (b'V', [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04, 0]),
    (b'W', [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A, 0]),
    (b'X', [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11, 0]),
    (b'Y', [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0]),
    (b'Z', [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F, 0]),
    (b'a', [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F, 0]),
    (b'b', [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E, 0]),
    (b'c', [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E, 0]),
    (b'd', [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F, 0]),
    (b'e', [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E, 0]),
    (b'f', [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08, 0]),
    (b'g', [0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E]),
    (b'h', [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11, 0]),
    (b'i', [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E, 0]),
    (b'j', [0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x12, 0x0C]),
    (b'k', [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0]),
    (b'l', [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0]),
    (b'm', [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11, 0]),
    (b'n', [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11, 0]),
    (b'o', [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E, 0]),
    (b'p', [0x00, 0x00, 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10]),
    (b'q', [0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x01]),
    (b'r', [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0]),
    (b's', [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E, 0]),
    (b't', [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06, 0]),
    (b'u', [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D, 0]),
    (b'v', [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04, 0]),
    (b'w', [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A, 0]),
    (b'x', [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0]),
    (b'y', [0x00, 0x00, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E]),
    (b'z', [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F, 0]),
];
