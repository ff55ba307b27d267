//! ICU flowsheet: 3-5 charted times of vital signs, running infusions, allergies.
//! The answer is the most recent column. Layouts: parameters x times table, times x
//! parameters table (sometimes newest first), nursing narrative.

use super::{allergies, allergy_text, date, date_text, fmt_num, json_num, person, Block, Doc, Rng};
use serde_json::json;

/// `(drug, low, high, decimals, unit)` of continuous infusions.
const INFUSIONS: &[(&str, f64, f64, u32, &str)] = &[
    ("norepinephrine", 0.02, 0.3, 2, "mcg/kg/min"),
    ("propofol", 5.0, 50.0, 0, "mcg/kg/min"),
    ("fentanyl", 25.0, 200.0, 0, "mcg/h"),
    ("insulin", 1.0, 10.0, 1, "units/h"),
    ("heparin", 500.0, 1800.0, 0, "units/h"),
    ("dexmedetomidine", 0.2, 1.4, 1, "mcg/kg/h"),
    ("vasopressin", 0.03, 0.04, 2, "units/min"),
];

struct Vitals {
    time: String,
    hr: i64,
    sys: i64,
    dia: i64,
    rr: i64,
    spo2: i64,
    temp: f64,
    gcs: i64,
}

impl Vitals {
    fn bp(&self) -> String {
        format!("{}/{}", self.sys, self.dia)
    }
    fn map(&self) -> i64 {
        (self.sys + 2 * self.dia + 1) / 3
    }
}

/// One flowsheet.
pub fn generate(rng: &mut Rng) -> Doc {
    let mrn = format!("{}", rng.int(1_000_000, 9_999_999));
    let name = person(rng);
    let bed = format!("{}-{}", rng.pick(&["MICU", "SICU", "CCU", "NICU-A"]), rng.int(1, 24));
    let day = date(rng);
    let step = *rng.pick(&[1i64, 2, 4]);
    let n = rng.int(3, 5);
    let start = rng.int(0, 23 - step * (n - 1)).max(0);
    let (mut hr, mut sys, mut dia) = (rng.int(55, 125), rng.int(85, 165), rng.int(45, 95));
    let (mut rr, mut spo2, mut temp, gcs0) = (rng.int(12, 28), rng.int(88, 100), rng.float(36.0, 39.4, 1), rng.int(8, 15));
    let mut series = Vec::new();
    for i in 0..n {
        let h = start + i * step;
        series.push(Vitals { time: format!("{h:02}:00"), hr, sys, dia, rr, spo2, temp, gcs: (gcs0 + rng.int(-1, 1)).clamp(3, 15) });
        hr = (hr + rng.int(-8, 8)).clamp(40, 160);
        sys = (sys + rng.int(-12, 12)).clamp(75, 200);
        dia = (dia + rng.int(-8, 8)).clamp(35, sys - 20);
        rr = (rr + rng.int(-3, 3)).clamp(8, 36);
        spo2 = (spo2 + rng.int(-2, 2)).clamp(84, 100);
        temp = super::round((temp + rng.float(-0.4, 0.4, 1)).clamp(35.5, 40.2), 1);
    }
    let n_drips = rng.int(0, 3) as usize;
    let drips: Vec<String> = rng
        .sample(INFUSIONS, n_drips)
        .into_iter()
        .map(|(d, lo, hi, dec, unit)| format!("{d} {} {unit}", fmt_num(super::round(lo + rng.unit() * (hi - lo), dec), dec)))
        .collect();
    let allergy = allergies(rng);
    let o2 = rng.pick(&["room air", "2 L nasal cannula", "4 L nasal cannula", "high-flow 40 L 50%", "ventilator FiO2 40%"]).to_string();
    let last = series.last().expect("n >= 3");
    let target = json!({
        "mrn": mrn, "time": last.time, "hr_bpm": last.hr, "bp_mmhg": last.bp(), "rr_per_min": last.rr,
        "spo2_pct": last.spo2, "temp_c": json_num(last.temp, 1), "gcs": last.gcs, "infusions": drips, "allergies": allergy,
    });
    let layout = rng.int(0, 2) as usize;
    let mut blocks = vec![Block::Title(rng.pick(&["ICU FLOWSHEET", "Critical Care Flowsheet", "INTENSIVE CARE UNIT - VITAL SIGNS"]).to_string())];
    let day_text = date_text(rng, day);
    blocks.push(Block::Fields(vec![
        ("Patient".into(), name),
        ("MRN".into(), mrn.clone()),
        ("Bed".into(), bed),
        ("Date".into(), day_text),
    ]));
    blocks.push(Block::Gap);
    let allergy_line = allergy_text(rng, &allergy);
    let drip_lines = |rng: &mut Rng| -> Vec<String> {
        if drips.is_empty() { vec![rng.pick(&["None", "No continuous infusions"]).to_string()] } else { drips.clone() }
    };
    match layout {
        0 => {
            let mut header = vec!["Parameter".to_owned()];
            header.extend(series.iter().map(|v| v.time.clone()));
            let row = |label: &str, f: &dyn Fn(&Vitals) -> String| {
                let mut r = vec![label.to_owned()];
                r.extend(series.iter().map(f));
                r
            };
            let rows = vec![
                row("HR (bpm)", &|v| v.hr.to_string()),
                row("BP (mmHg)", &|v| v.bp()),
                row("MAP (mmHg)", &|v| v.map().to_string()),
                row("RR (/min)", &|v| v.rr.to_string()),
                row("SpO2 (%)", &|v| v.spo2.to_string()),
                row("Temp (C)", &|v| fmt_num(v.temp, 1)),
                row("GCS", &|v| v.gcs.to_string()),
            ];
            blocks.push(Block::Heading("Vital Signs".into()));
            blocks.push(Block::Table { header, rows });
            blocks.push(Block::Line(format!("O2: {o2}")));
            blocks.push(Block::Gap);
            blocks.push(Block::Heading("Continuous Infusions".into()));
            blocks.extend(drip_lines(rng).into_iter().map(|d| Block::Line(format!("- {d}"))));
            blocks.push(Block::Gap);
            blocks.push(Block::Line(format!("Allergies: {allergy_line}")));
        }
        1 => {
            let header = ["Time", "HR", "BP", "RR", "SpO2", "Temp", "GCS"].map(str::to_owned).to_vec();
            let mut rows: Vec<Vec<String>> = series
                .iter()
                .map(|v| vec![v.time.clone(), v.hr.to_string(), v.bp(), v.rr.to_string(), format!("{}%", v.spo2), format!("{} C", fmt_num(v.temp, 1)), v.gcs.to_string()])
                .collect();
            let newest_first = rng.chance(0.5);
            if newest_first {
                rows.reverse();
            }
            blocks.push(Block::Line(format!("Allergies: {allergy_line}")));
            blocks.push(Block::Gap);
            blocks.push(Block::Heading(if newest_first { "Vitals (most recent first)".into() } else { "Vitals".into() }));
            blocks.push(Block::Table { header, rows });
            blocks.push(Block::Gap);
            blocks.push(Block::Fields(vec![("Oxygen".into(), o2), ("Drips".into(), drip_lines(rng).join("; "))]));
        }
        _ => {
            blocks.push(Block::Heading(rng.pick(&["Nursing Note", "RN Progress Note", "Nursing Assessment"]).to_string()));
            let style = rng.int(0, 2);
            for v in &series {
                let t = v.time.replace(':', "");
                let line = match style {
                    0 => format!("{t}: HR {} bpm, BP {} mmHg, RR {}, SpO2 {}% on {o2}, T {} C, GCS {}.", v.hr, v.bp(), v.rr, v.spo2, fmt_num(v.temp, 1), v.gcs),
                    1 => format!("At {} heart rate {}, blood pressure {}, resp rate {}, sat {}%, temp {} C, GCS {}.", v.time, v.hr, v.bp(), v.rr, v.spo2, fmt_num(v.temp, 1), v.gcs),
                    _ => format!("{}  HR {} | BP {} | RR {} | SpO2 {}% | T {} C | GCS {}", v.time, v.hr, v.bp(), v.rr, v.spo2, fmt_num(v.temp, 1), v.gcs),
                };
                blocks.push(Block::Line(line));
            }
            blocks.push(Block::Gap);
            let drips_text = if drips.is_empty() { "no infusions running".to_owned() } else { format!("infusing {}", drips.join(", ")) };
            blocks.push(Block::Line(format!("Currently {drips_text}. Allergies: {allergy_line}.")));
        }
    }
    Doc { blocks, target, layout }
}
