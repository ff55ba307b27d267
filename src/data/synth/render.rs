//! Draws a document's blocks to a grayscale PNG with the bundled Liberation Sans (SIL OFL
//! 1.1, datasets/fonts/), rasterized by ab_glyph: title, bold headings, wrapped lines,
//! aligned fields, ruled tables; then an optional small rotation (skew) and pixel noise.
//! Deterministic: the same blocks, options and stream give the same bytes.

use super::{Block, Rng};
use crate::data::DataError;
use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::{GrayImage, Luma};
use std::path::Path;

/// The bundled font (Liberation Sans Regular 2.1.5, SIL Open Font License 1.1).
pub const FONT_TTF: &[u8] = include_bytes!("../../../datasets/fonts/LiberationSans-Regular.ttf");

/// Page and augmentation settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// Page width in pixels (height follows the content).
    pub width: u32,
    /// Body text size in pixels.
    pub font_px: f32,
    /// Largest rotation in degrees; each page draws one in `[-max, max]` (0: none).
    pub max_skew_deg: f32,
    /// Pixel noise amplitude as a fraction of full scale (0: none).
    pub noise: f32,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self { width: 896, font_px: 18.0, max_skew_deg: 1.5, noise: 0.04 }
    }
}

struct Canvas<'f> {
    img: GrayImage,
    font: &'f FontRef<'f>,
}

impl Canvas<'_> {
    fn text_width(&self, text: &str, px: f32) -> f32 {
        let sf = self.font.as_scaled(PxScale::from(px));
        let mut w = 0.0;
        let mut prev = None;
        for c in text.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                w += sf.kern(p, id);
            }
            w += sf.h_advance(id);
            prev = Some(id);
        }
        w
    }

    /// Draws `text` with its top-left at `(x, y)`; `bold` overstrikes one pixel to the right.
    fn draw(&mut self, text: &str, x: f32, y: f32, px: f32, bold: bool) {
        let scale = PxScale::from(px);
        let sf = self.font.as_scaled(scale);
        let (w, h) = (self.img.width() as i32, self.img.height() as i32);
        for dx in if bold { &[0.0f32, 0.8][..] } else { &[0.0f32][..] } {
            let mut caret = point(x + dx, y + sf.ascent());
            let mut prev = None;
            for c in text.chars() {
                let id = sf.glyph_id(c);
                if let Some(p) = prev {
                    caret.x += sf.kern(p, id);
                }
                let glyph = id.with_scale_and_position(scale, caret);
                caret.x += sf.h_advance(id);
                prev = Some(id);
                let Some(outline) = self.font.outline_glyph(glyph) else { continue };
                let b = outline.px_bounds();
                let img = &mut self.img;
                outline.draw(|gx, gy, cov| {
                    let (px_, py_) = (b.min.x as i32 + gx as i32, b.min.y as i32 + gy as i32);
                    if px_ >= 0 && py_ >= 0 && px_ < w && py_ < h {
                        let p = img.get_pixel_mut(px_ as u32, py_ as u32);
                        let ink = (cov.clamp(0.0, 1.0) * 255.0) as u8;
                        p.0[0] = p.0[0].min(255 - ink);
                    }
                });
            }
        }
    }

    fn hline(&mut self, x0: f32, x1: f32, y: f32) {
        let y = y as u32;
        for x in x0.max(0.0) as u32..(x1 as u32).min(self.img.width()) {
            if y < self.img.height() {
                self.img.put_pixel(x, y, Luma([60]));
            }
        }
    }
}

/// Splits `text` into lines no wider than `max` pixels at spaces.
fn wrap(canvas: &Canvas<'_>, text: &str, px: f32, max: f32) -> Vec<String> {
    let mut lines = Vec::new();
    for para in text.split('\n') {
        let mut cur = String::new();
        for word in para.split(' ') {
            let cand = if cur.is_empty() { word.to_owned() } else { format!("{cur} {word}") };
            if !cur.is_empty() && canvas.text_width(&cand, px) > max {
                lines.push(std::mem::replace(&mut cur, word.to_owned()));
            } else {
                cur = cand;
            }
        }
        lines.push(cur);
    }
    lines
}

/// Lays out and draws the blocks; returns the page before augmentation.
pub fn render_page(blocks: &[Block], opts: &RenderOptions) -> GrayImage {
    let font = FontRef::try_from_slice(FONT_TTF).expect("the bundled font parses");
    // Two passes: measure the height with a scratch canvas, then draw.
    let mut height = 0.0;
    for pass in 0..2 {
        let h = if pass == 0 { 1 } else { height as u32 };
        let mut c = Canvas { img: GrayImage::from_pixel(opts.width, h.max(1), Luma([255])), font: &font };
        let (margin, px) = (40.0f32, opts.font_px);
        let line_h = px * 1.4;
        let max_w = opts.width as f32 - 2.0 * margin;
        let mut y = margin;
        for b in blocks {
            match b {
                Block::Title(t) => {
                    let tpx = px * 1.45;
                    let x = ((opts.width as f32 - c.text_width(t, tpx)) / 2.0).max(margin);
                    c.draw(t, x, y, tpx, true);
                    y += tpx * 1.4;
                    c.hline(margin, opts.width as f32 - margin, y);
                    y += line_h * 0.6;
                }
                Block::Heading(t) => {
                    c.draw(t, margin, y, px * 1.1, true);
                    y += line_h * 1.1;
                }
                Block::Line(t) => {
                    for l in wrap(&c, t, px, max_w) {
                        c.draw(&l, margin, y, px, false);
                        y += line_h;
                    }
                }
                Block::Fields(f) => {
                    let label_w = f.iter().map(|(k, _)| c.text_width(&format!("{k}:"), px)).fold(0.0, f32::max) + px;
                    for (k, v) in f {
                        c.draw(&format!("{k}:"), margin, y, px, true);
                        for l in wrap(&c, v, px, max_w - label_w) {
                            c.draw(&l, margin + label_w, y, px, false);
                            y += line_h;
                        }
                    }
                }
                Block::Table { header, rows } => {
                    let pad = px * 0.6;
                    let mut widths: Vec<f32> = header.iter().map(|h| c.text_width(h, px) + 1.0).collect();
                    for r in rows {
                        for (i, cell) in r.iter().enumerate() {
                            widths[i] = widths[i].max(c.text_width(cell, px));
                        }
                    }
                    let total: f32 = widths.iter().map(|w| w + 2.0 * pad).sum();
                    let shrink = (max_w / total).min(1.0);
                    let tpx = px * shrink;
                    let xs: Vec<f32> = widths.iter().scan(margin, |x, w| {
                        let start = *x;
                        *x += (w + 2.0 * pad) * shrink;
                        Some(start)
                    }).collect();
                    let right = margin + total * shrink;
                    c.hline(margin, right, y);
                    for (ri, r) in std::iter::once(header).chain(rows.iter()).enumerate() {
                        for (i, cell) in r.iter().enumerate() {
                            c.draw(cell, xs[i] + pad * shrink, y + tpx * 0.25, tpx, ri == 0);
                        }
                        y += tpx * 1.5;
                        c.hline(margin, right, y);
                    }
                    y += line_h * 0.4;
                }
                Block::Gap => y += line_h * 0.6,
            }
        }
        height = y + margin;
        if pass == 1 {
            return c.img;
        }
    }
    unreachable!("two passes")
}

/// Rotates by `deg` about the center (bilinear, white outside) and adds noise.
pub fn augment(img: &GrayImage, deg: f32, noise: f32, rng: &mut Rng) -> GrayImage {
    let (w, h) = img.dimensions();
    let (s, c) = (deg.to_radians() as f64).sin_cos();
    let (cx, cy) = (w as f64 / 2.0, h as f64 / 2.0);
    let sample = |x: f64, y: f64| -> f64 {
        if x < 0.0 || y < 0.0 || x > (w - 1) as f64 || y > (h - 1) as f64 {
            return 255.0;
        }
        let (x0, y0) = (x.floor() as u32, y.floor() as u32);
        let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
        let (fx, fy) = (x - x0 as f64, y - y0 as f64);
        let p = |x, y| img.get_pixel(x, y).0[0] as f64;
        (p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx) * (1.0 - fy) + (p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx) * fy
    };
    GrayImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f64 - cx, y as f64 - cy);
        let v = if deg == 0.0 { img.get_pixel(x, y).0[0] as f64 } else { sample(c * dx + s * dy + cx, -s * dx + c * dy + cy) };
        let n = if noise > 0.0 { (rng.unit() - 0.5) * 2.0 * noise as f64 * 255.0 } else { 0.0 };
        Luma([(v + n).round().clamp(0.0, 255.0) as u8])
    })
}

/// Renders, augments and writes one PNG.
pub fn render_png(blocks: &[Block], opts: &RenderOptions, rng: &mut Rng, path: &Path) -> Result<(), DataError> {
    let page = render_page(blocks, opts);
    let deg = if opts.max_skew_deg > 0.0 { ((rng.unit() * 2.0 - 1.0) * opts.max_skew_deg as f64) as f32 } else { 0.0 };
    let img = augment(&page, deg, opts.noise, rng);
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| DataError::Invalid(format!("cannot encode {}: {e}", path.display())))?;
    std::fs::write(path, bytes).map_err(|e| DataError::io(path, e))
}
